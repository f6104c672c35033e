//! Prometheus metrics and the HTTP endpoint that serves them.
//!
//! The daemon updates these as it records transitions and runs; nothing here
//! decides anything. The endpoint failing to bind is logged and survived: the
//! agent's real work does not depend on being scraped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IncidentLabels {
    pub check: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub runbook: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunbookLabel {
    pub runbook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountLabel {
    pub mount: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

pub struct Metrics {
    registry: Registry,
    pub incidents_opened: Family<IncidentLabels, Counter>,
    pub incidents_open: Family<StateLabels, Gauge>,
    pub remediations: Family<RunLabels, Counter>,
    pub remediation_duration: Family<RunbookLabel, Histogram>,
    pub watched_units: Gauge,
    pub bus_connected: Gauge,
    pub bus_reconnects: Counter,
    pub evidence_pending: Gauge,
    pub evidence_spool_depth: Gauge,
    pub evidence_last_seq: Gauge,
    pub evidence_worm: Gauge,
    pub evidence_uploaded: Counter,
    pub evidence_upload_failures: Counter,
    pub build_info: Family<VersionLabel, Gauge<f64, AtomicU64>>,
    pub disk_used_ratio: Family<MountLabel, Gauge<f64, AtomicU64>>,
    pub disk_inodes_used_ratio: Family<MountLabel, Gauge<f64, AtomicU64>>,
    pub disk_seconds_to_full: Family<MountLabel, Gauge<f64, AtomicU64>>,
    pub disk_read_errors: Counter,
    /// The mounts of the last round, whose series are removed when they vanish.
    disk_mounts: std::sync::Mutex<Vec<String>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("msp_agent");
        let incidents_opened = Family::<IncidentLabels, Counter>::default();
        registry.register(
            "incidents_opened",
            "Incidents opened, by check and severity",
            incidents_opened.clone(),
        );
        let incidents_open = Family::<StateLabels, Gauge>::default();
        registry.register(
            "incidents_open",
            "Incidents not resolved, by state",
            incidents_open.clone(),
        );
        let remediations = Family::<RunLabels, Counter>::default();
        registry.register(
            "remediations",
            "Runbook runs and refusals, by runbook and outcome",
            remediations.clone(),
        );
        let remediation_duration = Family::<RunbookLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.25, 2.0, 10))
        });
        registry.register(
            "remediation_duration_seconds",
            "Duration of runbook runs",
            remediation_duration.clone(),
        );
        let watched_units = Gauge::default();
        registry.register(
            "watched_units",
            "Units the agent follows",
            watched_units.clone(),
        );
        let bus_connected = Gauge::default();
        registry.register(
            "system_bus_connected",
            "1 while the agent holds a connection to the system bus",
            bus_connected.clone(),
        );
        let bus_reconnects = Counter::default();
        registry.register(
            "system_bus_losses",
            "Times the system bus connection was lost",
            bus_reconnects.clone(),
        );
        let evidence_pending = Gauge::default();
        registry.register(
            "evidence_events_pending",
            "Incident transitions and runs recorded but not yet sealed as evidence",
            evidence_pending.clone(),
        );
        let evidence_spool_depth = Gauge::default();
        registry.register(
            "evidence_spool_depth",
            "Evidence bundles durable locally but not yet in the bucket",
            evidence_spool_depth.clone(),
        );
        let evidence_last_seq = Gauge::default();
        registry.register(
            "evidence_last_sequence",
            "Sequence number of the newest sealed evidence bundle",
            evidence_last_seq.clone(),
        );
        let evidence_worm = Gauge::default();
        registry.register(
            "evidence_worm_enabled",
            "1 when the bucket was seen with Object Lock enabled and uploads are locked",
            evidence_worm.clone(),
        );
        let evidence_uploaded = Counter::default();
        registry.register(
            "evidence_uploaded",
            "Evidence bundles uploaded to the bucket",
            evidence_uploaded.clone(),
        );
        let evidence_upload_failures = Counter::default();
        registry.register(
            "evidence_upload_failures",
            "Failed evidence upload attempts",
            evidence_upload_failures.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge<f64, AtomicU64>>::default();
        registry.register("build_info", "The agent's version", build_info.clone());
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1.0);
        let disk_used_ratio = Family::<MountLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "disk_used_ratio",
            "Used space of a watched mount: used / (used + available to unprivileged users)",
            disk_used_ratio.clone(),
        );
        let disk_inodes_used_ratio = Family::<MountLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "disk_inodes_used_ratio",
            "Used inodes of a watched mount, where the file system has inodes",
            disk_inodes_used_ratio.clone(),
        );
        let disk_seconds_to_full = Family::<MountLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "disk_seconds_to_full",
            "Predicted seconds until a watched mount is full at the last hour's fill rate, while it grows",
            disk_seconds_to_full.clone(),
        );
        let disk_read_errors = Counter::default();
        registry.register(
            "disk_read_errors",
            "Mountinfo lines, vanished mounts and statvfs calls that failed",
            disk_read_errors.clone(),
        );
        Arc::new(Metrics {
            disk_used_ratio,
            disk_inodes_used_ratio,
            disk_seconds_to_full,
            disk_read_errors,
            disk_mounts: std::sync::Mutex::new(Vec::new()),
            registry,
            incidents_opened,
            incidents_open,
            remediations,
            remediation_duration,
            watched_units,
            bus_connected,
            bus_reconnects,
            evidence_pending,
            evidence_spool_depth,
            evidence_last_seq,
            evidence_worm,
            evidence_uploaded,
            evidence_upload_failures,
            build_info,
        })
    }

    /// The OpenMetrics text format (what prometheus-client writes).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    /// The Prometheus text format 0.0.4: what Prometheus scrapes by default and
    /// `promtool check metrics` reads.
    pub fn encode(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }

    /// Sets the disk gauges from a round of samples; a mount absent from it
    /// loses its series, and so does a time to full that cannot be predicted.
    pub fn set_disks(&self, disks: &[crate::watch::disks::DiskObservation]) {
        let mut known = self.disk_mounts.lock().unwrap_or_else(|p| p.into_inner());
        for gone in known
            .iter()
            .filter(|m| !disks.iter().any(|d| &d.mount == *m))
        {
            let l = MountLabel {
                mount: gone.clone(),
            };
            self.disk_used_ratio.remove(&l);
            self.disk_inodes_used_ratio.remove(&l);
            self.disk_seconds_to_full.remove(&l);
        }
        for d in disks {
            let l = MountLabel {
                mount: d.mount.clone(),
            };
            self.disk_used_ratio.get_or_create(&l).set(d.used_ratio);
            match d.inodes_used_ratio {
                Some(r) => {
                    self.disk_inodes_used_ratio.get_or_create(&l).set(r);
                }
                None => {
                    self.disk_inodes_used_ratio.remove(&l);
                }
            }
            match d.seconds_to_full {
                Some(s) => {
                    self.disk_seconds_to_full.get_or_create(&l).set(s);
                }
                None => {
                    self.disk_seconds_to_full.remove(&l);
                }
            }
        }
        *known = disks.iter().map(|d| d.mount.clone()).collect();
    }

    /// Sets the open-incident gauges from a full count (every state present).
    pub fn set_open(&self, counts: &[(&str, i64)]) {
        for (state, n) in counts {
            self.incidents_open
                .get_or_create(&StateLabels {
                    state: state.to_string(),
                })
                .set(*n);
        }
    }
}

/// Serves `GET /metrics` on `addr` until `cancel`.
/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family is
/// named with its `_total` suffix (OpenMetrics names it without, which
/// promtool reports as samples without help text), `unknown` is `untyped`, and
/// `# UNIT` and `# EOF` lines are left out. Samples are unchanged.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(if prefix == "# TYPE " && tail == "unknown" {
                        "untyped"
                    } else {
                        tail
                    });
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether a scraper asked for OpenMetrics (`Accept: application/openmetrics-text`).
fn wants_openmetrics(req: &Request<hyper::body::Incoming>) -> bool {
    req.headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr, cancel: CancellationToken) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %addr, error = %e,
                "cannot listen for metrics (check [metrics] listen); running without the endpoint");
            return;
        }
    };
    tracing::info!(listen = %addr, "serving Prometheus metrics on /metrics");
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    if req.uri().path() == "/metrics" {
                        let (kind, body) = if wants_openmetrics(&req) {
                            (
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                metrics.encode_openmetrics(),
                            )
                        } else {
                            ("text/plain; version=0.0.4; charset=utf-8", metrics.encode())
                        };
                        Response::builder()
                            .header("content-type", kind)
                            .body(Full::new(Bytes::from(body)))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    }
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_families() {
        let m = Metrics::new();
        m.incidents_opened
            .get_or_create(&IncidentLabels {
                check: "unit_failed".into(),
                severity: "critical".into(),
            })
            .inc();
        m.remediations
            .get_or_create(&RunLabels {
                runbook: "RB-SERVICE-001".into(),
                outcome: "success".into(),
            })
            .inc();
        m.set_open(&[("firing", 2), ("needs_human", 1)]);
        let text = m.encode();
        for line in [
            r#"msp_agent_incidents_opened_total{check="unit_failed",severity="critical"} 1"#,
            r#"msp_agent_remediations_total{runbook="RB-SERVICE-001",outcome="success"} 1"#,
            r#"msp_agent_incidents_open{state="firing"} 2"#,
            r#"msp_agent_build_info{version=""#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    /// Every family the agent exports, each with a sample.
    fn full() -> Arc<Metrics> {
        let m = Metrics::new();
        m.incidents_opened
            .get_or_create(&IncidentLabels {
                check: "unit_failed".into(),
                severity: "critical".into(),
            })
            .inc();
        m.remediations
            .get_or_create(&RunLabels {
                runbook: "RB-DISK-001".into(),
                outcome: "partial".into(),
            })
            .inc();
        m.remediation_duration
            .get_or_create(&RunbookLabel {
                runbook: "RB-DISK-001".into(),
            })
            .observe(2.5);
        m.set_open(&[("firing", 1)]);
        m.disk_read_errors.inc();
        m
    }

    #[test]
    fn prometheus_text_names_counter_families_with_total_and_has_no_eof() {
        let om = full().encode_openmetrics();
        assert!(om.contains("# TYPE msp_agent_remediations counter"), "{om}");
        assert!(om.trim_end().ends_with("# EOF"));
        let text = full().encode();
        for want in [
            "# HELP msp_agent_remediations_total ",
            "# TYPE msp_agent_remediations_total counter\n",
            "# TYPE msp_agent_disk_read_errors_total counter\n",
            "# TYPE msp_agent_remediation_duration_seconds histogram\n",
            r#"msp_agent_remediations_total{runbook="RB-DISK-001",outcome="partial"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert_eq!(
            to_prometheus_text(
                "# HELP a_total x\n# TYPE a_total counter\n# TYPE b unknown\nb 1\n# EOF\n"
            ),
            "# HELP a_total x\n# TYPE a_total counter\n# TYPE b untyped\nb 1\n",
            "a family already named _total keeps its name"
        );
    }

    /// What Prometheus's own checker says of the endpoint's body.
    #[test]
    #[ignore = "needs promtool (Debian's prometheus package); tests/run.sh runs it"]
    fn promtool_accepts_the_exposition_without_warnings() {
        use std::io::Write;
        let text = full().encode();
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool on PATH (apt-get install prometheus)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool check metrics: {:?}\n{said}\non:\n{text}",
            out.status.code()
        );
        // and the OpenMetrics form is what it complains about
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(full().encode_openmetrics().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "a positive control: OpenMetrics text draws warnings"
        );
    }

    #[test]
    fn the_shipped_dashboard_uses_only_exported_metrics() {
        let m = Metrics::new();
        m.incidents_opened
            .get_or_create(&IncidentLabels {
                check: "c".into(),
                severity: "s".into(),
            })
            .inc();
        m.set_open(&[("firing", 0)]);
        m.remediations
            .get_or_create(&RunLabels {
                runbook: "r".into(),
                outcome: "o".into(),
            })
            .inc();
        m.remediation_duration
            .get_or_create(&RunbookLabel {
                runbook: "r".into(),
            })
            .observe(1.0);
        let text = m.encode();
        let dashboard = include_str!("../../dist/grafana/msp-agent.json");
        let mut rest = dashboard;
        let mut checked = 0;
        while let Some(i) = rest.find("msp_agent_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                text.contains(&format!("{name}{{")) || text.contains(&format!("{name} ")),
                "the dashboard queries {name}, which the agent does not export"
            );
            checked += 1;
            rest = &rest[i + name.len()..];
        }
        assert!(
            checked >= 9,
            "only {checked} metric references found in the dashboard"
        );
    }
}
