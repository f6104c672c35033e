//! `msp-agent verify` on a directory: a spool and a copy of the bucket, good and
//! tampered; the first failing bundle is named with the right reason and the exit
//! code is non-zero.

mod evidence_support;

use std::path::{Path, PathBuf};

use evidence_support::*;
use msp_agent::prove::cli::{self, VerifyArgs, verify_dir};
use msp_agent::prove::spool::{encode_segment, export, parse_segment, segment_name};

/// A spool of 10 bundles (one segment each, as a single caller writes them).
fn spool(dir: &Path) -> PathBuf {
    let ev = open(dir, 1);
    for i in 0..8 {
        ev.record(&event(i)).unwrap();
    }
    spool_root(dir)
}

fn seg(root: &Path, seq: u64) -> PathBuf {
    root.join(HOST).join(segment_name(seq, seq))
}

fn first_failure(root: &Path) -> String {
    let r = verify_dir(root, &trusted(&[1]), false).unwrap();
    r.first_failure()
        .map(|f| f.to_string())
        .unwrap_or_else(|| "OK".into())
}

async fn exit_code(root: &Path, dir: &Path) -> String {
    let pubkey = dir.join("allowed_signers");
    std::fs::write(&pubkey, allowed_signers(&[1])).unwrap();
    let args = VerifyArgs {
        source: root.display().to_string(),
        pubkey,
        endpoint: None,
        region: "us-east-1".into(),
        path_style: false,
        credentials_file: None,
        allow_pruned: false,
        max_failures: 5,
    };
    format!("{:?}", cli::verify(args).await.unwrap())
}

#[tokio::test]
async fn tampered_spools_fail_with_the_right_message() {
    type Tamper = fn(&Path);
    let cases: &[(&str, Tamper, &str)] = &[
        (
            "flipped byte",
            |r| {
                let p = seg(r, 5);
                let mut b = std::fs::read(&p).unwrap();
                let pos = b.windows(6).position(|w| w == b"nginx.").unwrap();
                b[pos] ^= 1;
                std::fs::write(&p, b).unwrap();
            },
            "seq 5 (SPOOL/web-1/000000000005-000000000005.seg#5): signature does not match the bundle's bytes",
        ),
        (
            "removed bundle",
            |r| std::fs::remove_file(seg(r, 5)).unwrap(),
            "seq 6 (SPOOL/web-1/000000000006-000000000006.seg#6): sequence gap: seq 5 is missing",
        ),
        (
            "two bundles swapped",
            |r| {
                let (a, b) = (seg(r, 4), seg(r, 5));
                let tmp = a.with_extension("x");
                std::fs::rename(&a, &tmp).unwrap();
                std::fs::rename(&b, &a).unwrap();
                std::fs::rename(&tmp, &b).unwrap();
            },
            "000000000004-000000000004.seg: spool segment named for seq 4..4 holds 1 records, seq 5..5",
        ),
        (
            "truncated file",
            |r| {
                let p = seg(r, 7);
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 40]).unwrap();
            },
            "000000000007-000000000007.seg: damaged spool segment: truncated",
        ),
        (
            "signed by another key",
            |r| {
                let p = seg(r, 3);
                let mut recs = parse_segment(&std::fs::read(&p).unwrap()).unwrap();
                recs[0].sig = key(9).sign(&recs[0].json).unwrap();
                std::fs::write(&p, encode_segment(&recs)).unwrap();
            },
            "seq 3 (SPOOL/web-1/000000000003-000000000003.seg#3): signed by SHA256:",
        ),
    ];
    for (what, tamper, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = spool(dir.path());
        assert_eq!(
            first_failure(&root),
            "OK",
            "{what}: not good before tampering"
        );
        tamper(&root);
        let got = first_failure(&root).replace(&root.display().to_string(), "SPOOL");
        assert!(got.contains(want), "{what}:\n got {got}\nwant {want}");
        assert_eq!(
            exit_code(&root, dir.path()).await,
            "ExitCode(unix_exit_status(1))",
            "{what}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let root = spool(dir.path());
    assert_eq!(
        exit_code(&root, dir.path()).await,
        "ExitCode(unix_exit_status(0))"
    );
}

#[tokio::test]
async fn tampered_bucket_copies_fail_with_the_right_message() {
    fn file(root: &Path, seq: u64, ext: &str) -> PathBuf {
        let mut stack = vec![root.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{seq:012}-"))
                    && p.extension().unwrap() == ext
                {
                    return p;
                }
            }
        }
        panic!("no {seq}.{ext}");
    }
    type Tamper = fn(&Path);
    let cases: &[(&str, Tamper, &str)] = &[
        (
            "flipped byte",
            |r| {
                let p = file(r, 5, "json");
                let mut b = std::fs::read(&p).unwrap();
                let pos = b.windows(6).position(|w| w == b"nginx.").unwrap();
                b[pos] ^= 1;
                std::fs::write(&p, b).unwrap();
            },
            "seq 5 (COPY/web-1/2026/",
        ),
        (
            "removed bundle",
            |r| std::fs::remove_file(file(r, 5, "json")).unwrap(),
            "sequence gap: seq 5 is missing",
        ),
        (
            "two bundles swapped",
            |r| {
                // Whole bundles (bundle and signature) trade places.
                for ext in ["json", "sig"] {
                    let (a, b) = (
                        file(r, 4, "json").with_extension(ext),
                        file(r, 5, "json").with_extension(ext),
                    );
                    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
                    std::fs::write(&a, y).unwrap();
                    std::fs::write(&b, x).unwrap();
                }
            },
            "stored under seq 5 but the bundle says seq 4",
        ),
        (
            "truncated file",
            |r| {
                let p = file(r, 7, "json");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 3]).unwrap();
            },
            "not valid JSON",
        ),
        (
            "signed by another key",
            |r| {
                let p = file(r, 3, "json");
                std::fs::write(
                    p.with_extension("sig"),
                    key(9).sign(&std::fs::read(&p).unwrap()).unwrap(),
                )
                .unwrap();
            },
            "seq 3 (COPY/web-1/2026/",
        ),
    ];
    for (what, tamper, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool(dir.path());
        let copy = dir.path().join("copy");
        export(&spool, &copy).unwrap();
        assert_eq!(first_failure(&copy), "OK");
        tamper(&copy);
        let got = first_failure(&copy).replace(&copy.display().to_string(), "COPY");
        assert!(got.contains(want), "{what}:\n got {got}\nwant {want}");
        assert_eq!(
            exit_code(&copy, dir.path()).await,
            "ExitCode(unix_exit_status(1))",
            "{what}"
        );
    }
}
