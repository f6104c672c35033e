//! SIGKILL at any instant loses no acknowledged bundle and never reuses or skips a
//! sequence number.
//!
//! A test target with its own `main` (`harness = false` in Cargo.toml): run plainly it
//! is the test, which re-executes its own binary as a child with MSP_EVIDENCE_CHILD_STATE
//! set. The child records bundles from four threads as fast as it can and appends
//! `<seq> <hash>` to an acknowledgement file after each `record` returns. The parent
//! kills it with SIGKILL at random moments, many times, then checks the spool: one
//! contiguous chain from seq 1, every signature valid, and every acknowledged sequence
//! present with the acknowledged hash. It ends with the line `N passed, M failed`.
//!
//! It takes the arguments of the usual test harness that make sense for one test: a
//! name filter (`--exact` too), `--skip NAME`, `--list`, `--ignored` (nothing to run:
//! the test is not ignored) and `--include-ignored`; others are accepted and ignored.

mod evidence_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use evidence_support::*;
use msp_agent::prove::bundle::ParsedBundle;
use msp_agent::prove::cli::verify_dir;
use msp_agent::prove::local::read_dir_items;

const CHILD_ENV: &str = "MSP_EVIDENCE_CHILD_STATE";
const TEST: &str = "sigkill_under_load_loses_nothing_and_reuses_no_sequence";

fn main() -> ExitCode {
    if let Ok(state) = std::env::var(CHILD_ENV) {
        child_records_until_killed(state.into());
    }
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let (mut exact, mut list, mut only_ignored) = (false, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--exact" => exact = true,
            "--list" => list = true,
            "--ignored" => only_ignored = true,
            "--skip" => skips.extend(args.next()),
            // Options of the usual harness that take a value.
            "--test-threads" | "--format" | "--color" | "--logfile" | "--shuffle-seed" | "-Z" => {
                args.next();
            }
            s if s.starts_with('-') => {}
            s => filters.push(s.to_owned()),
        }
    }
    let selected = !only_ignored
        && (filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    f == TEST
                } else {
                    TEST.contains(f.as_str())
                }
            }))
        && !skips.iter().any(|s| TEST.contains(s.as_str()));
    if list {
        if selected {
            println!("{TEST}: test");
        }
        return ExitCode::SUCCESS;
    }
    if !selected {
        println!("0 passed, 0 failed (1 filtered out)");
        return ExitCode::SUCCESS;
    }
    println!("running 1 test");
    let ok =
        std::panic::catch_unwind(sigkill_under_load_loses_nothing_and_reuses_no_sequence).is_ok();
    println!("test {TEST} ... {}", if ok { "ok" } else { "FAILED" });
    println!("{} passed, {} failed", u8::from(ok), u8::from(!ok));
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The child: records until it is killed; never returns.
fn child_records_until_killed(state: std::path::PathBuf) -> ! {
    let ev = open(&state, 1);
    let acks = std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.join("acks"))
            .unwrap(),
    );
    println!("READY");
    std::io::stdout().flush().unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (ev, acks) = (ev.clone(), &acks);
            s.spawn(move || {
                for i in 0.. {
                    let sealed = ev.record(&event(t * 1_000_000 + i)).expect("record");
                    // One write(2) per line: survives the process being killed.
                    let line = format!("{} {}\n", sealed.seq, sealed.hash);
                    acks.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            });
        }
    });
    unreachable!("the recording threads never end")
}

fn sigkill_under_load_loses_nothing_and_reuses_no_sequence() {
    let rounds: u32 = std::env::var("MSP_SIGKILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until it is recording, then kill it at a random moment.
        let mut out = child.stdout.take().unwrap();
        let mut buf = [0u8; 64];
        let mut seen = String::new();
        while !seen.contains("READY") {
            let n = std::io::Read::read(&mut out, &mut buf).unwrap();
            assert!(n > 0, "child exited before recording (round {round})");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        std::thread::sleep(Duration::from_micros(rand::random::<u64>() % 60_000));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child should have been killed"
        );
    }

    // The spool as the next start finds it.
    let ev = open(dir.path(), 1);
    let last = ev.last_seq();
    drop(ev);
    let (items, fails) = read_dir_items(&spool_root(dir.path())).unwrap();
    assert!(fails.is_empty(), "{fails:?}");
    let mut by_seq = BTreeMap::new();
    let mut partial = 0u64;
    for i in &items {
        let p = ParsedBundle::parse(&i.json).unwrap();
        if p.kind == "agent_start" {
            partial += p.envelope.body["removed_partial_writes"].as_u64().unwrap();
        }
        assert!(
            by_seq.insert(p.envelope.seq, p.hash).is_none(),
            "seq {} twice",
            p.envelope.seq
        );
    }
    assert_eq!(
        by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "gap in the spool"
    );

    let acks = std::fs::read_to_string(dir.path().join("acks")).unwrap();
    let mut acked = BTreeMap::new();
    for line in acks.lines() {
        let (seq, hash) = line.split_once(' ').unwrap();
        let seq: u64 = seq.parse().unwrap();
        assert!(
            acked.insert(seq, hash.to_owned()).is_none(),
            "seq {seq} acknowledged twice"
        );
        assert_eq!(
            by_seq.get(&seq),
            Some(&hash.to_owned()),
            "acknowledged seq {seq} lost or replaced"
        );
    }
    let report = verify_dir(&spool_root(dir.path()), &trusted(&[1]), false).unwrap();
    assert!(report.ok(), "{:?}", report.failures.first());
    println!(
        "{rounds} SIGKILLs in {:.1}s: {} bundles in one chain, {} acknowledged, {} unfinished writes cleaned up",
        started.elapsed().as_secs_f64(),
        last,
        acked.len(),
        partial
    );
    assert!(
        acked.len() as u64 > u64::from(rounds),
        "the child barely recorded anything"
    );
}
