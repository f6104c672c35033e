//! The durable local spool: sealed bundles on disk, in sequence order, until S3 has them.
//!
//! The unit of durability is a *segment*: one file holding one or more consecutive
//! bundles (several when concurrent callers are committed together). A segment is
//! written to a temporary file, fsynced, renamed to `<first>-<last>.seg`, and the
//! directory is fsynced; only then is any of its bundles acknowledged. So a file
//! with a final name is always complete, and a crash at any instant leaves at most
//! a `.tmp` file behind, which recovery removes (its bundles were never acknowledged,
//! and their sequence numbers were never handed out).
//!
//! Segment format (bytes):
//! ```text
//! msp-agent-spool/1\n
//! <seq> <json length> <sig length>\n<json bytes><sig bytes>   (repeated)
//! ```
//! This module owns files only; it knows nothing of keys, S3 or the clock.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::bundle::ParsedBundle;

pub const SEGMENT_MAGIC: &[u8] = b"msp-agent-spool/1\n";
pub const SEGMENT_EXT: &str = "seg";
/// No single bundle or signature is larger than this (refused on write, rejected on read).
pub const MAX_RECORD_BYTES: usize = 16 << 20;
/// The file holding the highest sequence known to be in S3.
pub const UPLOADED_FILE: &str = "uploaded";

/// One sealed bundle: its sequence, canonical JSON bytes, and armored SSHSIG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub seq: u64,
    pub json: Vec<u8>,
    pub sig: Vec<u8>,
}

pub fn segment_name(first: u64, last: u64) -> String {
    format!("{first:012}-{last:012}.{SEGMENT_EXT}")
}

/// `(first, last)` from a segment file name.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 12 || b.len() != 12 || !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

pub fn encode_segment(records: &[SpoolRecord]) -> Vec<u8> {
    let size: usize = records
        .iter()
        .map(|r| r.json.len() + r.sig.len() + 48)
        .sum();
    let mut out = Vec::with_capacity(SEGMENT_MAGIC.len() + size);
    out.extend_from_slice(SEGMENT_MAGIC);
    for r in records {
        out.extend_from_slice(format!("{} {} {}\n", r.seq, r.json.len(), r.sig.len()).as_bytes());
        out.extend_from_slice(&r.json);
        out.extend_from_slice(&r.sig);
    }
    out
}

/// Parse a segment's bytes strictly: every byte must belong to a record.
pub fn parse_segment(bytes: &[u8]) -> Result<Vec<SpoolRecord>, String> {
    let mut rest = bytes
        .strip_prefix(SEGMENT_MAGIC)
        .ok_or_else(|| "not a spool segment (bad header)".to_string())?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let at = bytes.len() - rest.len();
        let nl = rest
            .iter()
            .take(64)
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated or corrupt record header at byte {at}"))?;
        let header = std::str::from_utf8(&rest[..nl])
            .map_err(|_| format!("record header at byte {at} is not text"))?;
        let nums: Vec<&str> = header.split(' ').collect();
        let parse = |s: &str| -> Option<u64> {
            (!s.is_empty()
                && s.len() <= 20
                && s.bytes().all(|c| c.is_ascii_digit())
                && (s == "0" || !s.starts_with('0')))
            .then(|| s.parse().ok())
            .flatten()
        };
        let [seq, jl, sl] = nums[..] else {
            return Err(format!(
                "record header at byte {at} is not `<seq> <len> <len>`"
            ));
        };
        let (Some(seq), Some(jl), Some(sl)) = (parse(seq), parse(jl), parse(sl)) else {
            return Err(format!(
                "record header at byte {at} is not `<seq> <len> <len>`"
            ));
        };
        let (jl, sl) = (jl as usize, sl as usize);
        if jl > MAX_RECORD_BYTES || sl > MAX_RECORD_BYTES {
            return Err(format!(
                "record at byte {at} claims {jl}+{sl} bytes, more than allowed"
            ));
        }
        let body = &rest[nl + 1..];
        if body.len() < jl + sl {
            return Err(format!(
                "truncated: record seq {seq} at byte {at} needs {} bytes, {} remain",
                jl + sl,
                body.len()
            ));
        }
        out.push(SpoolRecord {
            seq,
            json: body[..jl].to_vec(),
            sig: body[jl..jl + sl].to_vec(),
        });
        rest = &body[jl + sl..];
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first: u64,
    pub last: u64,
    pub bytes: u64,
}

/// The last bundle found in the spool at open.
#[derive(Debug, Clone)]
pub struct Tail {
    pub seq: u64,
    pub hash: String,
    pub key_id: String,
}

#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub removed_tmp: u64,
    pub tail: Option<Tail>,
    pub uploaded_seq: u64,
}

/// An open spool directory (one host's chain).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    dir_file: File,
    segments: VecDeque<SegmentInfo>,
    total_bytes: u64,
}

fn io_ctx(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl Spool {
    /// Open (creating it, mode 0700) and recover: remove unfinished writes, check that
    /// segments are contiguous, and read the last bundle.
    pub fn open(dir: &Path) -> io::Result<(Spool, Recovery)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_ctx(dir, "cannot create spool", e))?;
        let dir_file = File::open(dir).map_err(|e| io_ctx(dir, "cannot open spool", e))?;
        let mut rec = Recovery::default();
        let mut segs = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_ctx(dir, "cannot list spool", e))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(entry.path())
                    .map_err(|e| io_ctx(&entry.path(), "cannot remove", e))?;
                rec.removed_tmp += 1;
            } else if let Some((first, last)) = parse_segment_name(&name) {
                segs.push(SegmentInfo {
                    first,
                    last,
                    bytes: entry.metadata()?.len(),
                });
            }
        }
        if rec.removed_tmp > 0 {
            dir_file.sync_all()?;
        }
        segs.sort_by_key(|s| s.first);
        for w in segs.windows(2) {
            if w[1].first != w[0].last + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "spool {} is not contiguous: {} is followed by {}; a segment was removed or \
                         added by hand. Move the spool aside and run `msp-agent verify` on it",
                        dir.display(),
                        segment_name(w[0].first, w[0].last),
                        segment_name(w[1].first, w[1].last)
                    ),
                ));
            }
        }
        let total_bytes = segs.iter().map(|s| s.bytes).sum();
        let spool = Spool {
            dir: dir.to_owned(),
            dir_file,
            segments: segs.into(),
            total_bytes,
        };
        if let Some(last) = spool.segments.back() {
            let path = spool.segment_path(last);
            let records = read_segment_file(&path)?;
            let bad = |why: String| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {why}", path.display()),
                )
            };
            let r = records.last().ok_or_else(|| bad("empty segment".into()))?;
            if r.seq != last.last {
                return Err(bad(format!(
                    "last record is seq {}, the name says {}",
                    r.seq, last.last
                )));
            }
            let p = ParsedBundle::parse(&r.json).map_err(|e| bad(format!("last bundle: {e}")))?;
            rec.tail = Some(Tail {
                seq: r.seq,
                hash: p.hash,
                key_id: p.envelope.key_id,
            });
        }
        rec.uploaded_seq = spool
            .read_uploaded()?
            .min(rec.tail.as_ref().map_or(0, |t| t.seq));
        Ok((spool, rec))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.segments.iter()
    }

    fn segment_path(&self, s: &SegmentInfo) -> PathBuf {
        self.dir.join(segment_name(s.first, s.last))
    }

    /// Write consecutive records as one segment, durably. On error nothing of it remains
    /// (`Ok(false)` inside the error path means the cleanup itself failed: see `write`).
    pub fn write(&mut self, records: &[SpoolRecord]) -> Result<(), WriteError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        let info = SegmentInfo {
            first: first.seq,
            last: last.seq,
            bytes: 0,
        };
        let path = self.segment_path(&info);
        let tmp = path.with_extension("seg.tmp");
        let bytes = encode_segment(records);
        let result = (|| -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            self.dir_file.sync_all()
        })();
        match result {
            Ok(()) => {
                self.total_bytes += bytes.len() as u64;
                self.segments.push_back(SegmentInfo {
                    bytes: bytes.len() as u64,
                    ..info
                });
                Ok(())
            }
            Err(e) => {
                let e = io_ctx(&path, "cannot write spool segment", e);
                let _ = fs::remove_file(&tmp);
                let cleaned = match fs::remove_file(&path) {
                    Ok(()) => self.dir_file.sync_all().is_ok(),
                    Err(r) => r.kind() == io::ErrorKind::NotFound,
                };
                Err(WriteError { error: e, cleaned })
            }
        }
    }

    /// Records with `seq > after` and `seq <= upto`, at most `max` of them, in order.
    pub fn read_after(&self, after: u64, upto: u64, max: usize) -> io::Result<Vec<SpoolRecord>> {
        let mut out = Vec::new();
        for s in self
            .segments
            .iter()
            .filter(|s| s.last > after && s.first <= upto)
        {
            for r in read_segment_file(&self.segment_path(s))? {
                if r.seq > after && r.seq <= upto {
                    out.push(r);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Segment files (paths) that hold sequences in `(after, upto]`, for reading
    /// without holding the spool.
    pub fn segment_paths_after(&self, after: u64, upto: u64) -> Vec<PathBuf> {
        self.segments
            .iter()
            .filter(|s| s.last > after && s.first <= upto)
            .map(|s| self.segment_path(s))
            .collect()
    }

    /// Delete whole segments already uploaded (`last <= uploaded`), oldest first, while
    /// the spool is larger than `keep_bytes`. The newest segment always stays: it
    /// anchors the chain after a restart. Returns the bytes freed.
    pub fn prune_uploaded(&mut self, uploaded: u64, keep_bytes: u64) -> io::Result<u64> {
        let mut freed = 0;
        while self.total_bytes > keep_bytes && self.segments.len() > 1 {
            let s = self.segments.front().cloned().expect("len > 1");
            if s.last > uploaded {
                break;
            }
            let path = self.segment_path(&s);
            fs::remove_file(&path).map_err(|e| io_ctx(&path, "cannot prune", e))?;
            self.segments.pop_front();
            self.total_bytes -= s.bytes;
            freed += s.bytes;
        }
        if freed > 0 {
            self.dir_file.sync_all()?;
        }
        Ok(freed)
    }

    pub fn read_uploaded(&self) -> io::Result<u64> {
        let path = self.dir.join(UPLOADED_FILE);
        match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} does not hold a number", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_ctx(&path, "cannot read", e)),
        }
    }

    /// Persist the upload watermark atomically. Not fsynced on purpose: losing it
    /// only means re-checking a few objects in S3 (uploads are idempotent).
    pub fn write_uploaded(&self, seq: u64) -> io::Result<()> {
        let path = self.dir.join(UPLOADED_FILE);
        let tmp = self.dir.join(format!("{UPLOADED_FILE}.tmp"));
        fs::write(&tmp, format!("{seq}\n"))?;
        fs::rename(&tmp, &path)
    }
}

#[derive(Debug)]
pub struct WriteError {
    pub error: io::Error,
    /// Whether every trace of the failed segment was removed.
    pub cleaned: bool,
}

pub fn read_segment_file(path: &Path) -> io::Result<Vec<SpoolRecord>> {
    let bytes = fs::read(path).map_err(|e| io_ctx(path, "cannot read", e))?;
    parse_segment(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Write every bundle of a spool tree as `<object key>.json` / `.sig` files under `out`,
/// the layout of the S3 bucket, e.g. to hand a local spool to an auditor.
pub fn export(spool_root: &Path, out: &Path) -> io::Result<u64> {
    let mut n = 0;
    let mut stack = vec![spool_root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
                continue;
            }
            if parse_segment_name(&entry.file_name().to_string_lossy()).is_none() {
                continue;
            }
            for r in read_segment_file(&path)? {
                let p = ParsedBundle::parse(&r.json).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: seq {}: {e}", path.display(), r.seq),
                    )
                })?;
                let stem = out.join(p.envelope.object_stem());
                fs::create_dir_all(stem.parent().expect("stem has a parent"))?;
                fs::write(stem.with_extension("json"), &r.json)?;
                fs::write(stem.with_extension("sig"), &r.sig)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> SpoolRecord {
        SpoolRecord {
            seq,
            json: format!("{{\"seq\":{seq}}}").into_bytes(),
            sig: b"SIG\n".to_vec(),
        }
    }

    #[test]
    fn segment_round_trip_and_strict_parse() {
        let recs = vec![rec(1), rec(2), rec(3)];
        let bytes = encode_segment(&recs);
        assert_eq!(parse_segment(&bytes).unwrap(), recs);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bytes[..bytes.len() - 1].to_vec(), "truncated"),
            (b"garbage".to_vec(), "bad header"),
            ([SEGMENT_MAGIC, b"1 01 0\n"].concat(), "not `<seq>"),
            ([SEGMENT_MAGIC, b"1 2\n"].concat(), "not `<seq>"),
            (
                [SEGMENT_MAGIC, b"1 99999999999 0\n"].concat(),
                "more than allowed",
            ),
            ([SEGMENT_MAGIC, b"1 1 1"].concat(), "truncated or corrupt"),
        ];
        for (input, want) in cases {
            let err = parse_segment(&input).unwrap_err();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(&input)
            );
        }
        assert_eq!(parse_segment(SEGMENT_MAGIC).unwrap(), vec![]);
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(1, 12), "000000000001-000000000012.seg");
        assert_eq!(
            parse_segment_name("000000000001-000000000012.seg"),
            Some((1, 12))
        );
        for bad in [
            "000000000002-000000000001.seg",
            "1-2.seg",
            "000000000001-000000000012.seg.tmp",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }
}
