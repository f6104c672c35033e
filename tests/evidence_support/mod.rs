//! Shared by the evidence and S3 tests: sample events, opening a recorder in a
//! temporary state directory, trusted keys, and (for S3) a switchable TCP proxy.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use msp_agent::events::{
    Event, IncidentState, IncidentTransition, RateLimitDecision, RunOutcome, RunbookRun, StepRecord,
};
use msp_agent::prove::keys::{SigningKey, TrustedKeys, allowed_signers_line};
use msp_agent::prove::{Evidence, EvidenceConfig};

pub const HOST: &str = "web-1";

/// Event number `i`: incident transitions and runbook runs, alternately.
pub fn event(i: u64) -> Event {
    let incident_id = format!("inc-{:04}", i / 2);
    let at =
        Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap() + chrono::Duration::seconds(i as i64);
    if i.is_multiple_of(2) {
        Event::IncidentTransition(IncidentTransition {
            incident_id,
            check: "unit_failed".into(),
            target: "nginx.service".into(),
            severity: "critical".into(),
            from: None,
            to: IncidentState::Firing,
            at,
            reason: "ActiveState=failed Result=exit-code".into(),
            observation: serde_json::json!({"ActiveState": "failed", "SubState": "failed", "NRestarts": i}),
        })
    } else {
        Event::RunbookRun(RunbookRun {
            run_id: format!("run-{i}"),
            incident_id,
            runbook: "RB-SERVICE-001".into(),
            target: "nginx.service".into(),
            dry_run: false,
            started_at: at,
            finished_at: Some(at + chrono::Duration::seconds(3)),
            outcome: RunOutcome::Success,
            steps: vec![StepRecord {
                name: "restart".into(),
                started_at: at,
                duration_ms: 1200,
                result: "ok".into(),
                detail: serde_json::json!({"job": "/org/freedesktop/systemd1/job/42", "invocation_id": "0f1e2d3c", "journal_cursor": "s=abc;i=1"}),
            }],
            rate_limit: vec![RateLimitDecision {
                runbook: "RB-SERVICE-001".into(),
                target: "nginx.service".into(),
                at,
                allowed: true,
                rule: "allowed".into(),
                runs_in_window: 1,
                max_runs: 3,
                window_secs: 1800,
                global_runs_last_hour: 1,
                global_budget: 20,
            }],
        })
    }
}

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_seed([seed; 32])
}

pub fn open(state: &Path, seed: u8) -> Evidence {
    open_cfg(state, seed, &EvidenceConfig::default())
}

pub fn open_cfg(state: &Path, seed: u8, cfg: &EvidenceConfig) -> Evidence {
    Evidence::open_with_key(cfg, state, HOST, "0.1.0-test", key(seed)).expect("open evidence")
}

pub fn trusted(seeds: &[u8]) -> TrustedKeys {
    TrustedKeys::parse(&allowed_signers(seeds)).unwrap()
}

pub fn allowed_signers(seeds: &[u8]) -> String {
    seeds
        .iter()
        .map(|s| allowed_signers_line(HOST, key(*s).public_key()) + "\n")
        .collect()
}

pub fn spool_root(state: &Path) -> PathBuf {
    state.join("evidence").join("spool")
}

/// The S3 endpoint the s3_* tests run against. They are `#[ignore]`d, so they only run
/// when asked for (`--ignored` / `--include-ignored`, as tests/run.sh does with the
/// loopback S3 server up); asked for without the server's environment, they fail.
pub fn s3_env() -> String {
    let missing: Vec<&str> = [
        "MSP_AGENT_S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    .into_iter()
    .filter(|v| std::env::var(v).unwrap_or_default().is_empty())
    .collect();
    assert!(
        missing.is_empty(),
        "{} not set: this test needs the loopback S3 server with Object Lock; \
         start it with `eval \"$(bash tests/s3/ceph.sh up)\"` (or run tests/run.sh)",
        missing.join(", ")
    );
    std::env::var("MSP_AGENT_S3_ENDPOINT").unwrap()
}

pub mod proxy {
    //! A TCP proxy on 127.0.0.1 in front of the S3 server: it can play "server down"
    //! (refuses and cuts every connection) and records what clients send.
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    pub struct Proxy {
        pub url: String,
        state: Arc<Mutex<(bool, CancellationToken)>>,
        pub sent: Arc<Mutex<Vec<u8>>>,
        stop: CancellationToken,
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.stop.cancel();
            self.state.lock().unwrap().1.cancel();
        }
    }

    impl Proxy {
        pub async fn start(upstream: &str) -> Proxy {
            let upstream = upstream
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_owned();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let state = Arc::new(Mutex::new((true, CancellationToken::new())));
            let sent = Arc::new(Mutex::new(Vec::new()));
            let stop = CancellationToken::new();
            let (st, se, sp) = (state.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let (client, _) = tokio::select! {
                        _ = sp.cancelled() => return,
                        r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    };
                    let (up, token) = {
                        let g = st.lock().unwrap();
                        (g.0, g.1.clone())
                    };
                    if !up {
                        drop(client);
                        continue;
                    }
                    let (upstream, sent) = (upstream.clone(), se.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (mut cr, mut cw) = client.into_split();
                        let (mut sr, mut sw) = server.into_split();
                        let c2s = async {
                            let mut buf = vec![0u8; 65536];
                            loop {
                                let n = match cr.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                sent.lock().unwrap().extend_from_slice(&buf[..n]);
                                if sw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = sw.shutdown().await;
                        };
                        let s2c = async {
                            let _ = tokio::io::copy(&mut sr, &mut cw).await;
                            let _ = cw.shutdown().await;
                        };
                        tokio::select! {
                            _ = token.cancelled() => {}
                            _ = async { tokio::join!(c2s, s2c) } => {}
                        }
                    });
                }
            });
            Proxy {
                url,
                state,
                sent,
                stop,
            }
        }

        /// "Server down": cut open connections and refuse new ones.
        pub fn down(&self) {
            let mut g = self.state.lock().unwrap();
            g.0 = false;
            g.1.cancel();
        }

        pub fn up(&self) {
            let mut g = self.state.lock().unwrap();
            *g = (true, CancellationToken::new());
        }

        pub fn sent_text(&self) -> String {
            String::from_utf8_lossy(&self.sent.lock().unwrap()).into_owned()
        }
    }
}
