//! Evidence throughput, printed as figures (run: `cargo bench --bench evidence`).
//!
//! 1. bundles sealed (canonical JSON, SHA-256 chain, SSHSIG) and spooled durably
//!    (fsync of segment and directory) per second: one caller, then 16 concurrent
//!    callers (group commit);
//! 2. verify throughput from a local directory: the spool, and the bucket layout;
//! 3. upload rate to the S3 server in MSP_AGENT_S3_ENDPOINT (skipped when unset).
//!
//! Sizes: MSP_BENCH_SERIAL (default 2000), MSP_BENCH_CONCURRENT (20000),
//! MSP_BENCH_UPLOAD (500). The state directory is under MSP_BENCH_DIR (default /var/tmp).

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use msp_agent::events::{Event, IncidentState, IncidentTransition};
use msp_agent::prove::cli::verify_dir;
use msp_agent::prove::keys::{SigningKey, TrustedKeys, allowed_signers_line};
use msp_agent::prove::{Evidence, EvidenceConfig, S3Config, spool};

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn event(i: u64) -> Event {
    Event::IncidentTransition(IncidentTransition {
        incident_id: format!("0190f3a2-7c1e-7000-8000-{i:012}"),
        check: "unit_failed".into(),
        target: "nginx.service".into(),
        severity: "critical".into(),
        from: Some(IncidentState::Firing),
        to: IncidentState::Resolved,
        at: Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap(),
        reason: "unit active again after RB-SERVICE-001".into(),
        observation: serde_json::json!({
            "ActiveState": "active", "SubState": "running", "Result": "success", "NRestarts": 2,
            "journal": ["nginx: worker process exited on signal 9", "Started nginx.service"],
            "disk": {"mount": "/var", "used_ratio": 0.8123, "inodes_used_ratio": 0.12}
        }),
    })
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn open(state: &Path, cfg: &EvidenceConfig) -> Evidence {
    Evidence::open_with_key(
        cfg,
        state,
        "bench-host",
        "bench",
        SigningKey::from_seed([4; 32]),
    )
    .unwrap()
}

fn main() {
    // `cargo bench` passes --bench; a test run (`cargo test --benches`) passes nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let base = std::env::var("MSP_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("msp-evidence-bench")
        .tempdir_in(&base)
        .unwrap();
    let key = SigningKey::from_seed([4; 32]);
    let trusted = TrustedKeys::parse(&allowed_signers_line("*", key.public_key())).unwrap();
    let cfg = EvidenceConfig {
        spool_max_bytes: 8 << 30,
        ..EvidenceConfig::default()
    };
    println!(
        "evidence bench: state in {} ({} cores)",
        dir.path().display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // 1a. one caller: every record waits for its own fsyncs.
    let n_serial = env_n("MSP_BENCH_SERIAL", 2000);
    let state = dir.path().join("serial");
    let ev = open(&state, &cfg);
    let t = Instant::now();
    for i in 0..n_serial {
        ev.record(&event(i)).unwrap();
    }
    let d = t.elapsed();
    println!(
        "seal+spool, 1 caller:    {n_serial:>7} bundles in {:>6.2}s = {:>8.0} bundles/s (fsync per bundle)",
        d.as_secs_f64(),
        rate(n_serial, d)
    );
    drop(ev);

    // 1b. concurrent callers: group commit shares the fsyncs.
    let n_conc = env_n("MSP_BENCH_CONCURRENT", 20000);
    let threads = 16u64;
    let state = dir.path().join("concurrent");
    let ev = open(&state, &cfg);
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let ev = ev.clone();
            s.spawn(move || {
                for i in 0..n_conc / threads {
                    ev.record(&event(th * 10_000_000 + i)).unwrap();
                }
            });
        }
    });
    let d = t.elapsed();
    let n_done = n_conc / threads * threads;
    let segments = std::fs::read_dir(ev.spool_dir()).unwrap().count();
    println!(
        "seal+spool, {threads} callers:  {n_done:>7} bundles in {:>6.2}s = {:>8.0} bundles/s ({} segments, each fsynced)",
        d.as_secs_f64(),
        rate(n_done, d),
        segments
    );
    drop(ev);

    // 2. verify from a directory.
    let root = state.join("evidence/spool");
    let t = Instant::now();
    let report = verify_dir(&root, &trusted, false).unwrap();
    let d = t.elapsed();
    assert!(report.ok(), "{:?}", report.first_failure());
    println!(
        "verify spool directory:  {:>7} bundles in {:>6.2}s = {:>8.0} bundles/s",
        report.bundles,
        d.as_secs_f64(),
        rate(report.bundles, d)
    );
    let copy = dir.path().join("copy");
    spool::export(&root, &copy).unwrap();
    // Write the copy out first: the figure is for verifying, not for the kernel
    // flushing 40,000 new files underneath it.
    let _ = std::process::Command::new("sync").status();
    let t = Instant::now();
    let report = verify_dir(&copy, &trusted, false).unwrap();
    let d = t.elapsed();
    assert!(report.ok(), "{:?}", report.first_failure());
    println!(
        "verify bucket-layout dir:{:>7} bundles in {:>6.2}s = {:>8.0} bundles/s (one .json + .sig file each)",
        report.bundles,
        d.as_secs_f64(),
        rate(report.bundles, d)
    );

    // 3. upload to the loopback S3 server.
    let Ok(endpoint) = std::env::var("MSP_AGENT_S3_ENDPOINT") else {
        println!("upload: skipped (MSP_AGENT_S3_ENDPOINT is not set; see tests/s3/ceph.sh)");
        return;
    };
    let n_up = env_n("MSP_BENCH_UPLOAD", 500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for window in [1usize, 8] {
        rt.block_on(upload(&endpoint, dir.path(), &cfg, n_up, window));
    }
}

async fn upload(endpoint: &str, dir: &Path, cfg: &EvidenceConfig, n_up: u64, window: usize) {
    let s3cfg = S3Config {
        endpoint: Some(endpoint.to_owned()),
        path_style: true,
        retention_days: 1,
        prefix: "bench".into(),
        upload_concurrency: window,
        ..S3Config::new(format!("msp-bench-{:08x}", rand::random::<u32>()))
    };
    let client = msp_agent::prove::s3::client(&(&s3cfg).into())
        .await
        .unwrap();
    client
        .create_bucket()
        .bucket(&s3cfg.bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let state = dir.join(format!("upload-{window}"));
    let ev = open(
        &state,
        &EvidenceConfig {
            s3: Some(s3cfg.clone()),
            ..cfg.clone()
        },
    );
    let ev2 = ev.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..n_up {
            ev2.record(&event(i)).unwrap();
        }
    })
    .await
    .unwrap();
    let total = ev.spool_depth();
    let cancel = tokio_util::sync::CancellationToken::new();
    let t = Instant::now();
    let task = tokio::spawn(msp_agent::prove::upload::run(
        ev.clone(),
        s3cfg,
        cancel.clone(),
    ));
    while ev.spool_depth() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "upload stalled: {:?}",
            ev.stats()
        );
    }
    let d = t.elapsed();
    cancel.cancel();
    task.await.unwrap();
    let order = if window == 1 {
        "strictly in order".to_owned()
    } else {
        format!("{window} at a time")
    };
    println!(
        "upload to {endpoint}: {total:>5} bundles in {:>6.2}s = {:>8.0} bundles/s ({} objects/s, {order}, COMPLIANCE, Content-MD5)",
        d.as_secs_f64(),
        rate(total, d),
        rate(total * 2, d) as u64
    );
}
