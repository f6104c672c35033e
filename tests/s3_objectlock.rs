//! Against a real S3 server with Object Lock enforcement (Ceph radosgw on 127.0.0.1,
//! started by `tests/s3/ceph.sh up`). The tests are ignored by a plain `cargo test`;
//! tests/run.sh runs them with the server up
//! (`cargo test --test s3_objectlock -- --include-ignored`). Run without the server's
//! environment (MSP_AGENT_S3_ENDPOINT, AWS_*), each one fails saying so.

mod evidence_support;

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode};
use evidence_support::proxy::Proxy;
use evidence_support::*;
use msp_agent::prove::keys::TrustedKeys;
use msp_agent::prove::s3::{self, ClientSettings};
use msp_agent::prove::verify::{self, Options};
use msp_agent::prove::{Evidence, EvidenceConfig, S3Config, WormStatus, upload};
use tokio_util::sync::CancellationToken;

/// A call the server must refuse: its HTTP status and S3 error code.
fn refusal<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    what: &str,
    r: Result<T, SdkError<E, HttpResponse>>,
) -> (u16, String) {
    let e = match r {
        Ok(v) => panic!("{what} was allowed: {v:?}"),
        Err(e) => e,
    };
    let status = e.raw_response().map(|r| r.status().as_u16());
    match (status, e.code()) {
        (Some(s), Some(c)) => (s, c.to_owned()),
        _ => panic!("{what} failed without an answer from the server: {e:?}"),
    }
}

async fn client(endpoint: &str) -> Client {
    s3::client(&ClientSettings {
        endpoint: Some(endpoint.into()),
        region: "us-east-1".into(),
        path_style: true,
        ..ClientSettings::default()
    })
    .await
    .unwrap()
}

async fn bucket(c: &Client, tag: &str, lock: bool) -> String {
    let name = format!("msp-{tag}-{:08x}", rand::random::<u32>());
    c.create_bucket()
        .bucket(&name)
        .object_lock_enabled_for_bucket(lock)
        .send()
        .await
        .unwrap();
    name
}

fn s3cfg(endpoint: &str, bucket: &str, prefix: &str) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.into()),
        prefix: prefix.into(),
        path_style: true,
        retention_days: 1,
        retry_max: Duration::from_millis(800),
        request_timeout: Duration::from_secs(5),
        ..S3Config::new(bucket)
    }
}

fn open_with(state: &std::path::Path, s3: &S3Config) -> Evidence {
    open_cfg(
        state,
        1,
        &EvidenceConfig {
            s3: Some(s3.clone()),
            ..EvidenceConfig::default()
        },
    )
}

async fn record(ev: &Evidence, range: std::ops::Range<u64>) {
    let ev = ev.clone();
    tokio::task::spawn_blocking(move || {
        for i in range {
            ev.record(&event(i)).unwrap();
        }
    })
    .await
    .unwrap();
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn keys_under(c: &Client, bucket: &str, prefix: &str) -> Vec<String> {
    let out = c
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

async fn verify_s3(c: &Client, bucket: &str, prefix: &str, keys: &TrustedKeys) -> verify::Report {
    let (items, hidden) = s3::list_items(c, bucket, prefix).await.unwrap();
    let opts = Options {
        check_retention: true,
        ..Options::default()
    };
    let mut report = verify::verify_items(&items, keys, &opts);
    report.add_failures(hidden);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the loopback S3 server with Object Lock: tests/s3/ceph.sh up sets MSP_AGENT_S3_ENDPOINT and AWS_*; tests/run.sh runs them"]
async fn s3_bucket_without_object_lock_is_detected_and_nothing_is_uploaded() {
    let endpoint = s3_env();
    let c = client(&endpoint).await;
    let b = bucket(&c, "nolock", false).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3cfg(&endpoint, &b, "ev");
    let ev = open_with(dir.path(), &cfg);
    record(&ev, 0..3).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(upload::run(ev.clone(), cfg, cancel.clone()));
    wait_until("the no-lock verdict", Duration::from_secs(20), || {
        ev.stats().worm == WormStatus::NotEnabled
    })
    .await;
    let stats = ev.stats();
    assert!(
        stats
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains(&format!("bucket {b} has no Object Lock")),
        "{stats:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        keys_under(&c, &b, "").await.is_empty(),
        "nothing may be uploaded to a bucket without Object Lock"
    );
    assert_eq!(ev.spool_depth(), 5, "everything stays in the spool");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the loopback S3 server with Object Lock: tests/s3/ceph.sh up sets MSP_AGENT_S3_ENDPOINT and AWS_*; tests/run.sh runs them"]
async fn s3_uploaded_bundles_are_locked_verified_and_cannot_be_deleted_or_shortened() {
    let endpoint = s3_env();
    let c = client(&endpoint).await;
    let b = bucket(&c, "locked", true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3cfg(&endpoint, &b, "evidence");
    let ev = open_with(dir.path(), &cfg);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(upload::run(ev.clone(), cfg.clone(), cancel.clone()));
    record(&ev, 0..10).await;
    wait_until("the spool to drain", Duration::from_secs(60), || {
        ev.spool_depth() == 0
    })
    .await;
    assert_eq!(ev.stats().worm, WormStatus::Enabled);
    assert_eq!(ev.stats().uploaded, 12);
    let keys = keys_under(&c, &b, "evidence/").await;
    assert_eq!(keys.len(), 24, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("evidence/{HOST}/"))),
        "{keys:?}"
    );

    // msp-agent verify on the bucket: signatures, chain, COMPLIANCE retention.
    let report = verify_s3(&c, &b, "evidence", &trusted(&[1])).await;
    assert!(report.ok(), "{:?}", report.failures);
    let pubkey = dir.path().join("allowed_signers");
    std::fs::write(&pubkey, allowed_signers(&[1])).unwrap();
    let args = msp_agent::prove::cli::VerifyArgs {
        source: format!("s3://{b}/evidence"),
        pubkey,
        endpoint: Some(endpoint.clone()),
        region: "us-east-1".into(),
        path_style: true,
        credentials_file: None,
        allow_pruned: false,
        max_failures: 5,
    };
    assert_eq!(
        format!("{:?}", msp_agent::prove::cli::verify(args).await.unwrap()),
        "ExitCode(unix_exit_status(0))"
    );

    // The lock holds: no delete of the version, no shorter retention, even with bypass.
    let key = keys.iter().find(|k| k.ends_with(".json")).unwrap();
    let head = c.head_object().bucket(&b).key(key).send().await.unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let until = s3::to_chrono(head.object_lock_retain_until_date().unwrap()).unwrap();
    assert!(
        until > chrono::Utc::now() + chrono::Duration::hours(23),
        "{until}"
    );
    let version = head.version_id().unwrap().to_owned();
    let del = c
        .delete_object()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .bypass_governance_retention(true)
        .send()
        .await;
    assert_eq!(
        refusal("deleting a COMPLIANCE-locked version", del),
        (403, "AccessDenied".to_owned())
    );
    let shorter = ObjectLockRetention::builder()
        .mode(ObjectLockRetentionMode::Compliance)
        .retain_until_date(aws_smithy_types::DateTime::from_secs(
            chrono::Utc::now().timestamp() + 60,
        ))
        .build();
    let shorten = c
        .put_object_retention()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .retention(shorter)
        .bypass_governance_retention(true)
        .send()
        .await;
    assert_eq!(
        refusal("shortening COMPLIANCE retention", shorten),
        (403, "AccessDenied".to_owned())
    );
    // Ceph answers both with AccessDenied, which a missing permission would give too:
    // the same client may lengthen the retention and delete a version without a lock.
    let longer = ObjectLockRetention::builder()
        .mode(ObjectLockRetentionMode::Compliance)
        .retain_until_date(aws_smithy_types::DateTime::from_secs(
            until.timestamp() + 3600,
        ))
        .build();
    c.put_object_retention()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .retention(longer)
        .send()
        .await
        .expect("lengthening COMPLIANCE retention");
    let unlocked = c
        .put_object()
        .bucket(&b)
        .key("unlocked")
        .body(ByteStream::from_static(b"no lock"))
        .send()
        .await
        .unwrap();
    c.delete_object()
        .bucket(&b)
        .key("unlocked")
        .version_id(unlocked.version_id().unwrap())
        .send()
        .await
        .expect("deleting a version without a lock");
    let r = c
        .get_object_retention()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.retention().unwrap().mode(),
        Some(&ObjectLockRetentionMode::Compliance)
    );
    let kept = s3::to_chrono(r.retention().unwrap().retain_until_date().unwrap()).unwrap();
    assert_eq!(
        kept.timestamp(),
        until.timestamp() + 3600,
        "the retention is the lengthened one"
    );

    // A plain delete only hides the object behind a delete marker: verify reports the
    // gap, and the locked version is still there.
    c.delete_object().bucket(&b).key(key).send().await.unwrap();
    let report = verify_s3(&c, &b, "evidence", &trusted(&[1])).await;
    assert!(!report.ok());
    let got = c
        .get_object()
        .bucket(&b)
        .key(key)
        .version_id(&version)
        .send()
        .await;
    assert!(got.is_ok(), "the locked version must survive a delete");

    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the loopback S3 server with Object Lock: tests/s3/ceph.sh up sets MSP_AGENT_S3_ENDPOINT and AWS_*; tests/run.sh runs them"]
async fn s3_down_for_a_while_then_everything_arrives_in_order() {
    let endpoint = s3_env();
    let c = client(&endpoint).await;
    let b = bucket(&c, "outage", true).await;
    let proxy = Proxy::start(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3cfg(&proxy.url, &b, "ev");
    let ev = open_with(dir.path(), &cfg);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(upload::run(ev.clone(), cfg, cancel.clone()));
    record(&ev, 0..5).await;
    wait_until("the first bundles", Duration::from_secs(30), || {
        ev.spool_depth() == 0
    })
    .await;

    proxy.down();
    record(&ev, 5..25).await;
    wait_until(
        "failed attempts while down",
        Duration::from_secs(30),
        || ev.stats().upload_failures >= 3,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = ev.stats();
    assert_eq!(stats.spool_depth, 20, "{stats:?}");
    assert_eq!(stats.worm, WormStatus::Unreachable);
    assert!(stats.last_error.is_some());
    let before = keys_under(&c, &b, "ev/").await.len();

    proxy.up();
    wait_until(
        "the spool to drain after the outage",
        Duration::from_secs(60),
        || ev.spool_depth() == 0,
    )
    .await;
    assert_eq!(before, 14);
    let report = verify_s3(&c, &b, "ev", &trusted(&[1])).await;
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.hosts[0].last_seq, 27);

    // In order: a bundle object never appears before the one preceding it.
    let list = c
        .list_objects_v2()
        .bucket(&b)
        .prefix("ev/")
        .send()
        .await
        .unwrap();
    let mut objs: Vec<(u64, i64)> = list
        .contents()
        .iter()
        .filter(|o| o.key().unwrap().ends_with(".json"))
        .map(|o| {
            let name = o.key().unwrap().rsplit('/').next().unwrap();
            (
                name[..12].parse().unwrap(),
                o.last_modified().unwrap().as_nanos() as i64,
            )
        })
        .collect();
    objs.sort();
    assert!(
        objs.windows(2).all(|w| w[0].1 <= w[1].1),
        "uploaded out of order: {objs:?}"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the loopback S3 server with Object Lock: tests/s3/ceph.sh up sets MSP_AGENT_S3_ENDPOINT and AWS_*; tests/run.sh runs them"]
async fn s3_puts_carry_content_md5_and_compliance_lock_headers() {
    let endpoint = s3_env();
    let c = client(&endpoint).await;
    let b = bucket(&c, "headers", true).await;
    let proxy = Proxy::start(&endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3cfg(&proxy.url, &b, "");
    let ev = open_with(dir.path(), &cfg);
    record(&ev, 0..2).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(upload::run(ev.clone(), cfg, cancel.clone()));
    wait_until("the upload", Duration::from_secs(30), || {
        ev.spool_depth() == 0
    })
    .await;
    cancel.cancel();
    task.await.unwrap();

    let sent = proxy.sent_text();
    let puts: Vec<&str> = sent
        .split("PUT /")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").next().unwrap())
        .collect();
    assert_eq!(puts.len(), 8, "4 bundles, 2 objects each:\n{sent}");
    for head in puts {
        let lower = head.to_ascii_lowercase();
        let md5 = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-md5: "))
            .unwrap_or_else(|| panic!("no Content-MD5:\n{head}"));
        assert_eq!(md5.trim().len(), 24, "{head}");
        assert!(
            lower.contains("x-amz-object-lock-mode: compliance"),
            "{head}"
        );
        assert!(
            lower.contains("x-amz-object-lock-retain-until-date: "),
            "{head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the loopback S3 server with Object Lock: tests/s3/ceph.sh up sets MSP_AGENT_S3_ENDPOINT and AWS_*; tests/run.sh runs them"]
async fn s3_reupload_after_a_crash_creates_no_second_version() {
    let endpoint = s3_env();
    let c = client(&endpoint).await;
    let b = bucket(&c, "idem", true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3cfg(&endpoint, &b, "ev");
    let ev = open_with(dir.path(), &cfg);
    record(&ev, 0..4).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(upload::run(ev.clone(), cfg.clone(), cancel.clone()));
    wait_until("the upload", Duration::from_secs(30), || {
        ev.spool_depth() == 0
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    let spool_dir = ev.spool_dir().to_owned();
    drop(ev);
    // As if the agent died before saving its upload mark.
    std::fs::remove_file(spool_dir.join("uploaded")).unwrap();

    let ev = open_with(dir.path(), &cfg);
    assert_eq!(ev.spool_depth(), 7);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(upload::run(ev.clone(), cfg, cancel.clone()));
    wait_until("the re-upload", Duration::from_secs(30), || {
        ev.spool_depth() == 0
    })
    .await;
    cancel.cancel();
    task.await.unwrap();
    let versions = c
        .list_object_versions()
        .bucket(&b)
        .prefix("ev/")
        .send()
        .await
        .unwrap();
    let n = versions.versions().len();
    assert_eq!(n, 14, "7 bundles × 2 objects, one version each");
    assert!(verify_s3(&c, &b, "ev", &trusted(&[1])).await.ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the loopback S3 server with Object Lock: tests/s3/ceph.sh up sets MSP_AGENT_S3_ENDPOINT and AWS_*; tests/run.sh runs them"]
async fn s3_tampered_objects_fail_verify_with_the_right_message() {
    let endpoint = s3_env();
    let c = client(&endpoint).await;
    let b = bucket(&c, "tamper", true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = s3cfg(&endpoint, &b, "base");
    let ev = open_with(dir.path(), &cfg);
    record(&ev, 0..6).await;
    let cancel = CancellationToken::new();
    let task = tokio::spawn(upload::run(ev.clone(), cfg, cancel.clone()));
    wait_until("the upload", Duration::from_secs(30), || {
        ev.spool_depth() == 0
    })
    .await;
    cancel.cancel();
    task.await.unwrap();

    // Someone with write access to the bucket: locked versions cannot change, but new
    // versions can be put on top (locked too), and delete markers can hide objects.
    let keys = keys_under(&c, &b, "base/").await;
    let get = |k: String| {
        let c = c.clone();
        let b = b.clone();
        async move {
            c.get_object()
                .bucket(&b)
                .key(&k)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes()
                .to_vec()
        }
    };
    let key_of = |seq: u64, ext: &str| {
        keys.iter()
            .find(|k| k.contains(&format!("/{seq:012}-")) && k.ends_with(ext))
            .unwrap()
            .clone()
    };
    let put = |k: String, body: Vec<u8>| {
        let c = c.clone();
        let b = b.clone();
        async move {
            let until =
                aws_smithy_types::DateTime::from_secs(chrono::Utc::now().timestamp() + 86400);
            c.put_object()
                .bucket(&b)
                .key(&k)
                .body(ByteStream::from(body))
                .object_lock_mode(ObjectLockMode::Compliance)
                .object_lock_retain_until_date(until)
                .send()
                .await
                .unwrap();
        }
    };
    let t = trusted(&[1]);
    let first = |r: &verify::Report| {
        r.first_failure()
            .map(|f| f.to_string())
            .unwrap_or_else(|| "OK".into())
    };
    assert_eq!(first(&verify_s3(&c, &b, "base", &t).await), "OK");

    // flipped byte (a new version of seq 5's bundle)
    let mut j = get(key_of(5, ".json")).await;
    let pos = j.windows(6).position(|w| w == b"nginx.").unwrap();
    j[pos] ^= 1;
    put(key_of(5, ".json"), j).await;
    let got = first(&verify_s3(&c, &b, "base", &t).await);
    assert!(
        got.contains("seq 5") && got.contains("signature does not match"),
        "flipped: {got}"
    );
    put(
        key_of(5, ".json"),
        get_version_0(&c, &b, &key_of(5, ".json")).await,
    )
    .await;

    // two bundles swapped (new versions with each other's content)
    let (j3, s3_, j4, s4) = (
        get(key_of(3, ".json")).await,
        get(key_of(3, ".sig")).await,
        get(key_of(4, ".json")).await,
        get(key_of(4, ".sig")).await,
    );
    put(key_of(3, ".json"), j4.clone()).await;
    put(key_of(3, ".sig"), s4.clone()).await;
    put(key_of(4, ".json"), j3.clone()).await;
    put(key_of(4, ".sig"), s3_.clone()).await;
    let got = first(&verify_s3(&c, &b, "base", &t).await);
    assert!(
        got.contains("stored under seq 4 but the bundle says seq 3"),
        "swapped: {got}"
    );
    put(key_of(3, ".json"), j3).await;
    put(key_of(3, ".sig"), s3_).await;
    put(key_of(4, ".json"), j4).await;
    put(key_of(4, ".sig"), s4).await;

    // truncated file
    let j6 = get(key_of(6, ".json")).await;
    put(key_of(6, ".json"), j6[..j6.len() / 2].to_vec()).await;
    let got = first(&verify_s3(&c, &b, "base", &t).await);
    assert!(got.contains("not valid JSON"), "truncated: {got}");
    put(key_of(6, ".json"), j6).await;

    // signed by another key
    let j7 = get(key_of(7, ".json")).await;
    let s7 = get(key_of(7, ".sig")).await;
    put(key_of(7, ".sig"), key(9).sign(&j7).unwrap()).await;
    let got = first(&verify_s3(&c, &b, "base", &t).await);
    assert!(
        got.contains("seq 7") && got.contains("not among the trusted public keys"),
        "other key: {got}"
    );
    put(key_of(7, ".sig"), s7).await;
    assert_eq!(
        first(&verify_s3(&c, &b, "base", &t).await),
        "OK",
        "restored"
    );

    // removed bundle (delete marker on bundle and signature)
    c.delete_object()
        .bucket(&b)
        .key(key_of(6, ".json"))
        .send()
        .await
        .unwrap();
    c.delete_object()
        .bucket(&b)
        .key(key_of(6, ".sig"))
        .send()
        .await
        .unwrap();
    let report = verify_s3(&c, &b, "base", &t).await;
    let got = first(&report);
    assert!(
        got.contains("seq 6") && got.contains("hidden by a delete marker"),
        "removed: {got}"
    );
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.reason.contains("sequence gap: seq 6 is missing")),
        "{:?}",
        report.failures
    );

    // The newest bundle hidden: no gap shows, the delete marker does.
    let last = keys
        .iter()
        .filter(|k| k.ends_with(".json"))
        .max()
        .unwrap()
        .clone();
    c.delete_object()
        .bucket(&b)
        .key(&last)
        .send()
        .await
        .unwrap();
    let report = verify_s3(&c, &b, "base", &t).await;
    let name = format!("s3://{b}/{last}");
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.name == name && f.reason.contains("hidden by a delete marker")),
        "newest removed: {:?}",
        report.failures
    );
}

/// The first (original, locked) version of an object.
async fn get_version_0(c: &Client, b: &str, key: &str) -> Vec<u8> {
    let v = c
        .list_object_versions()
        .bucket(b)
        .prefix(key)
        .send()
        .await
        .unwrap();
    let oldest = v
        .versions()
        .iter()
        .filter(|x| x.key() == Some(key))
        .min_by_key(|x| x.last_modified().unwrap().as_nanos())
        .unwrap();
    c.get_object()
        .bucket(b)
        .key(key)
        .version_id(oldest.version_id().unwrap())
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes()
        .to_vec()
}
