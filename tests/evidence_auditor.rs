//! The auditor's steps of docs/evidence.md, taken verbatim from the document and run
//! with the real `ssh-keygen`, on a good copy of the bucket layout and on tampered ones.

mod evidence_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use evidence_support::*;
use msp_agent::prove::keys::allowed_signers_line;
use msp_agent::prove::spool::export;
use msp_agent::prove::{Evidence, EvidenceConfig};

/// The bash block between the auditor-script markers of docs/evidence.md.
fn auditor_script() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/evidence.md")).unwrap();
    let start = doc
        .find("<!-- auditor-script:begin -->")
        .expect("begin marker");
    let end = doc.find("<!-- auditor-script:end -->").expect("end marker");
    let block = &doc[start..end];
    let body_start = block.find("```bash\n").expect("bash fence") + "```bash\n".len();
    let body_end = block.rfind("```").unwrap();
    block[body_start..body_end].to_owned()
}

/// Two hosts' evidence exported to `<dir>/evidence`, and their allowed_signers.
fn fixture(dir: &Path) -> PathBuf {
    let audit = dir.join("audit");
    for (host, seed) in [("web-1", 1u8), ("db-2", 2u8)] {
        let state = dir.join(host);
        let ev =
            Evidence::open_with_key(&EvidenceConfig::default(), &state, host, "0.1.0", key(seed))
                .unwrap();
        for i in 0..8 {
            ev.record(&event(i)).unwrap();
        }
        drop(ev);
        export(&spool_root(&state), &audit.join("evidence")).unwrap();
    }
    let signers = format!(
        "{}\n{}\n",
        allowed_signers_line("web-1", key(1).public_key()),
        allowed_signers_line("db-2", key(2).public_key())
    );
    std::fs::write(audit.join("allowed_signers"), signers).unwrap();
    audit
}

fn run_script(audit: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(auditor_script())
        .current_dir(audit)
        .output()
        .expect("bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The bundle file of `host` with sequence `seq` (and its signature).
fn bundle(audit: &Path, host: &str, seq: u64) -> (PathBuf, PathBuf) {
    let prefix = format!("{seq:012}-");
    let mut stack = vec![audit.join("evidence").join(host)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
                && p.extension().unwrap() == "json"
            {
                return (p.clone(), p.with_extension("sig"));
            }
        }
    }
    panic!("no bundle {seq} for {host}");
}

#[test]
fn the_documented_steps_pass_on_a_good_copy_with_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let audit = fixture(dir.path());
    let (ok, out) = run_script(&audit);
    assert!(ok, "{out}");
    assert!(out.contains("20 bundles checked, 0 problems"), "{out}");

    // The single-bundle example of the document, with its expected answer.
    let (json, sig) = bundle(&audit, "web-1", 5);
    let out = Command::new("ssh-keygen")
        .args([
            "-Y",
            "verify",
            "-f",
            "allowed_signers",
            "-I",
            "web-1",
            "-n",
            "msp-agent-evidence",
            "-s",
        ])
        .arg(&sig)
        .stdin(std::fs::File::open(&json).unwrap())
        .current_dir(&audit)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Good \"msp-agent-evidence\" signature for web-1 with ED25519 key"),
        "{text}"
    );
}

#[test]
fn the_documented_steps_catch_each_kind_of_tampering() {
    type Tamper = fn(&Path);
    let cases: &[(&str, Tamper, &[&str])] = &[
        (
            "flipped byte",
            |a| {
                let (j, _) = bundle(a, "web-1", 5);
                let mut b = std::fs::read(&j).unwrap();
                let pos = b.windows(6).position(|w| w == b"nginx.").unwrap();
                b[pos] = b'N';
                std::fs::write(&j, b).unwrap();
            },
            &[
                "BAD SIGNATURE: evidence/web-1/",
                "CHAIN BROKEN: evidence/web-1/",
            ],
        ),
        (
            "removed bundle",
            |a| {
                let (j, s) = bundle(a, "web-1", 5);
                std::fs::remove_file(j).unwrap();
                std::fs::remove_file(s).unwrap();
            },
            &["SEQUENCE: evidence/web-1/", "is seq 6, expected 5"],
        ),
        (
            "two bundles swapped",
            |a| {
                let (j4, s4) = bundle(a, "web-1", 4);
                let (j5, s5) = bundle(a, "web-1", 5);
                for (x, y) in [(&j4, &j5), (&s4, &s5)] {
                    let (bx, by) = (std::fs::read(x).unwrap(), std::fs::read(y).unwrap());
                    std::fs::write(x, by).unwrap();
                    std::fs::write(y, bx).unwrap();
                }
            },
            &["is seq 5, expected 4", "CHAIN BROKEN"],
        ),
        (
            "truncated file",
            |a| {
                let (j, _) = bundle(a, "db-2", 3);
                let b = std::fs::read(&j).unwrap();
                std::fs::write(&j, &b[..b.len() / 2]).unwrap();
            },
            &["BAD SIGNATURE: evidence/db-2/"],
        ),
        (
            "signed by another key",
            |a| {
                let (j, s) = bundle(a, "db-2", 4);
                std::fs::write(&s, key(9).sign(&std::fs::read(&j).unwrap()).unwrap()).unwrap();
            },
            &["BAD SIGNATURE: evidence/db-2/"],
        ),
    ];
    for (what, tamper, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let audit = fixture(dir.path());
        tamper(&audit);
        let (ok, out) = run_script(&audit);
        assert!(!ok, "{what}: the script passed:\n{out}");
        for w in *want {
            assert!(out.contains(w), "{what}: missing {w:?} in:\n{out}");
        }
    }
}
