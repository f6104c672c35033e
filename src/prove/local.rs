//! Reading bundles from a local directory tree for the verifier: spool segments
//! (`*.seg`) and the bucket's layout (`…/<host>/<yyyy>/<mm>/<dd>/<seq>-<id>.json` with
//! its `.sig`), in any mix, at any depth.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::bundle::seq_from_name;
use super::spool::{parse_segment, parse_segment_name};
use super::verify::{Failure, Item};

/// Every bundle under `root`, plus problems found while reading (damaged segments).
pub fn read_dir_items(root: &Path) -> anyhow::Result<(Vec<Item>, Vec<Failure>)> {
    let meta =
        fs::metadata(root).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", root.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", root.display());
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            fs::read_dir(&dir).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
        {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                files.push(entry.path());
            }
        }
    }
    // A fixed order (by the path's bytes: cheaper than component-wise for tens of
    // thousands of paths); the verifier orders bundles by host and sequence itself.
    files.sort_unstable_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    // Reading many small files dominates on a bucket copy: read on every core.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(files.len() / 256 + 1);
    let chunk = files.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<anyhow::Result<(Vec<Item>, Vec<Failure>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| s.spawn(move || read_files(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader thread"))
            .collect()
    });
    let mut items = Vec::new();
    let mut failures = Vec::new();
    for part in parts {
        let (i, f) = part?;
        items.extend(i);
        failures.extend(f);
    }
    Ok((items, failures))
}

fn read_files(files: &[PathBuf]) -> anyhow::Result<(Vec<Item>, Vec<Failure>)> {
    let mut items = Vec::new();
    let mut failures = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some((first, last)) = parse_segment_name(&name) {
            read_segment(path, first, last, &mut items, &mut failures);
        } else if let Some(stem) = name.strip_suffix(".json") {
            let json = fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let sig = fs::read(path.with_file_name(format!("{stem}.sig"))).ok();
            let mut item = Item::new(path.display().to_string(), json, sig);
            if let Some(seq) = seq_from_name(stem) {
                item.name_seq = Some(seq);
                item.name_host = host_from_path(path);
            }
            items.push(item);
        }
    }
    Ok((items, failures))
}

/// `…/<host>/<yyyy>/<mm>/<dd>/<file>` → host, when the three folders look like a date.
fn host_from_path(path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let n = parts.len();
    if n < 5 {
        return None;
    }
    let digits = |s: &str, len: usize| s.len() == len && s.bytes().all(|c| c.is_ascii_digit());
    (digits(&parts[n - 4], 4) && digits(&parts[n - 3], 2) && digits(&parts[n - 2], 2))
        .then(|| parts[n - 5].clone())
}

fn read_segment(
    path: &Path,
    first: u64,
    last: u64,
    items: &mut Vec<Item>,
    failures: &mut Vec<Failure>,
) {
    let name = path.display().to_string();
    let fail = |reason: String| Failure {
        host: String::new(),
        seq: None,
        name: name.clone(),
        reason,
    };
    let records = match fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| parse_segment(&b))
    {
        Ok(r) => r,
        Err(e) => {
            failures.push(fail(format!("damaged spool segment: {e}")));
            return;
        }
    };
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let expected: Vec<u64> = (first..=last).collect();
    if seqs != expected {
        let got = match (seqs.first(), seqs.last()) {
            (Some(a), Some(b)) => format!("{} records, seq {a}..{b}", seqs.len()),
            _ => "no records".into(),
        };
        failures.push(fail(format!(
            "spool segment named for seq {first}..{last} holds {got}, not in order"
        )));
    }
    for r in records {
        let mut item = Item::new(format!("{name}#{}", r.seq), r.json, Some(r.sig));
        item.name_seq = Some(r.seq);
        items.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_from_bucket_layout() {
        for (p, want) in [
            (
                "/x/ev/web-1/2026/03/04/000000000001-inc.json",
                Some("web-1"),
            ),
            ("web-1/2026/3/04/000000000001-inc.json", None),
            ("2026/03/04/a.json", None),
        ] {
            assert_eq!(host_from_path(Path::new(p)).as_deref(), want, "{p}");
        }
    }
}
