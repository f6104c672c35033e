//! The disks source: every `interval`, the real mounts from
//! `/proc/self/mountinfo` and their usage from `statvfs`.
//!
//! Which mounts are real follows prometheus node_exporter's default
//! exclusions (pseudo file systems, container and runtime mounts), and a
//! device mounted more than once (a bind mount such as `/nix/store` of the
//! root device) is reported once, under its shortest mount point. The fill
//! rate of each mount (a least-squares fit of used bytes over the last hour,
//! on the monotonic clock) is computed here, beside the samples it needs, and
//! travels in the observation. A line that cannot be read, a mount that
//! vanished or a `statvfs` that fails is logged and counted, and that mount is
//! skipped for the round; the source keeps running. The reading itself runs on
//! the blocking pool, never on the async runtime, one round at a time: a round
//! stuck in a hung network file system delays the next, never piles up.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The window of samples the fill rate is fitted over.
pub const FILL_WINDOW: Duration = Duration::from_secs(3600);
/// The shortest span of samples a fill rate is predicted from.
pub const FILL_MIN_SPAN: Duration = Duration::from_secs(300);

/// node_exporter's default `--collector.filesystem.fs-types-exclude`.
const IGNORED_FS_TYPES: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
];

/// node_exporter's default `--collector.filesystem.mount-points-exclude`:
/// these directories and everything below them.
const IGNORED_MOUNT_TREES: &[&str] = &["/dev", "/proc", "/sys"];
/// ... and everything below these (not the directory itself).
const IGNORED_MOUNT_PREFIXES: &[&str] = &[
    "/run/credentials/",
    "/run/containerd/",
    "/var/lib/docker/",
    "/var/lib/containers/storage/",
];

/// The disks source's settings.
#[derive(Debug, Clone)]
pub struct DiskWatchSettings {
    pub interval: Duration,
    /// The mount points to watch; `None`: every real mount.
    pub mounts: Option<Vec<String>>,
}

/// One line of mountinfo, the fields the source uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor`, the device (`st_dev`) of the mount.
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// One mount's usage as `statvfs` reported it, and when the agent read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskObservation {
    pub mount: String,
    pub device: String,
    pub fs_type: String,
    pub source: String,
    pub used_bytes: u64,
    /// Available to unprivileged users (`f_bavail`).
    pub available_bytes: u64,
    /// used / (used + available).
    pub used_ratio: f64,
    /// `None` where the file system reports no inodes (btrfs, some FUSE).
    pub inodes_used: Option<u64>,
    pub inodes_available: Option<u64>,
    pub inodes_used_ratio: Option<f64>,
    /// Growth of used bytes, from a least-squares fit over the last hour.
    pub fill_rate_bytes_per_second: Option<f64>,
    /// Seconds until no space is available at that rate; only while it grows.
    pub seconds_to_full: Option<f64>,
    pub seen_at: DateTime<Utc>,
}

/// What the disks source reports: one round of samples.
#[derive(Debug, Clone)]
pub struct DiskEvent {
    pub at: DateTime<Utc>,
    pub disks: Vec<DiskObservation>,
    /// Lines, mounts or `statvfs` calls that failed in this round (each logged).
    pub errors: u64,
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one line of `/proc/self/mountinfo`:
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`
/// (any number of optional fields before the ` - ` separator).
pub fn parse_mountinfo_line(line: &str) -> Result<MountEntry, String> {
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let sep = fields
        .iter()
        .position(|f| *f == "-")
        .ok_or("no ` - ` separator")?;
    if sep < 6 {
        return Err(format!(
            "{sep} fields before the separator, at least 6 expected"
        ));
    }
    let (major, minor) = fields[2]
        .split_once(':')
        .ok_or_else(|| format!("`{}` is not major:minor", fields[2]))?;
    let (major, minor) = match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(format!("`{}` is not major:minor", fields[2])),
    };
    let fs_type = fields.get(sep + 1).ok_or("no file system type")?;
    let source = fields.get(sep + 2).ok_or("no mount source")?;
    let mount_point = unescape(fields[4]);
    if !mount_point.starts_with('/') {
        return Err(format!("mount point `{mount_point}` is not absolute"));
    }
    Ok(MountEntry {
        device: format!("{major}:{minor}"),
        mount_point,
        fs_type: unescape(fs_type),
        source: unescape(source),
    })
}

/// Parses mountinfo text: the entries, and the lines that could not be read
/// (1-based line number, why).
pub fn parse_mountinfo(text: &str) -> (Vec<MountEntry>, Vec<(usize, String)>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_mountinfo_line(line) {
            Ok(e) => entries.push(e),
            Err(why) => errors.push((i + 1, why)),
        }
    }
    (entries, errors)
}

/// Is this a pseudo file system or a container/runtime mount (node_exporter's
/// default exclusions)?
pub fn is_ignored(e: &MountEntry) -> bool {
    let m = e.mount_point.as_str();
    IGNORED_FS_TYPES.contains(&e.fs_type.as_str())
        || e.fs_type.starts_with("cgroup")
        || IGNORED_MOUNT_TREES
            .iter()
            .any(|t| m == *t || m.strip_prefix(t).is_some_and(|r| r.starts_with('/')))
        || IGNORED_MOUNT_PREFIXES.iter().any(|p| m.starts_with(p))
}

/// The mounts to read: with `wanted`, exactly those mount points (the mount
/// on top where several are stacked); otherwise every real mount, one per
/// device, under its shortest mount point. Sorted by mount point. The second
/// value lists the wanted mount points that are not mounted.
pub fn select_mounts(
    entries: &[MountEntry],
    wanted: Option<&[String]>,
) -> (Vec<MountEntry>, Vec<String>) {
    if let Some(wanted) = wanted {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for w in wanted {
            // later lines are mounted over earlier ones
            match entries.iter().rev().find(|e| &e.mount_point == w) {
                Some(e) => out.push(e.clone()),
                None => missing.push(w.clone()),
            }
        }
        out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        return (out, missing);
    }
    let mut by_device: HashMap<&str, &MountEntry> = HashMap::new();
    for e in entries.iter().filter(|e| !is_ignored(e)) {
        let slot = by_device.entry(&e.device).or_insert(e);
        let key = |m: &MountEntry| (m.mount_point.len(), m.mount_point.clone());
        if key(e) < key(slot) {
            *slot = e;
        }
    }
    let mut out: Vec<MountEntry> = by_device.into_values().cloned().collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    (out, Vec::new())
}

/// Usage figures of one mount, from `statvfs`'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub fragment_size: u64,
    pub files: u64,
    pub files_free: u64,
    pub files_available: u64,
}

/// used / (used + available), 0 for a file system of no size.
fn ratio(used: u64, available: u64) -> f64 {
    let total = used as f64 + available as f64;
    if total == 0.0 {
        0.0
    } else {
        used as f64 / total
    }
}

/// The observation of a mount from its usage (fill rate left unset).
pub fn observe(e: &MountEntry, u: Usage, seen_at: DateTime<Utc>) -> DiskObservation {
    let used = u
        .blocks
        .saturating_sub(u.blocks_free)
        .saturating_mul(u.fragment_size);
    let available = u.blocks_available.saturating_mul(u.fragment_size);
    let (inodes_used, inodes_available, inodes_used_ratio) = if u.files == 0 {
        (None, None, None)
    } else {
        let iu = u.files.saturating_sub(u.files_free);
        (
            Some(iu),
            Some(u.files_available),
            Some(ratio(iu, u.files_available)),
        )
    };
    DiskObservation {
        mount: e.mount_point.clone(),
        device: e.device.clone(),
        fs_type: e.fs_type.clone(),
        source: e.source.clone(),
        used_bytes: used,
        available_bytes: available,
        used_ratio: ratio(used, available),
        inodes_used,
        inodes_available,
        inodes_used_ratio,
        fill_rate_bytes_per_second: None,
        seconds_to_full: None,
        seen_at,
    }
}

/// The slope (per second) of a least-squares line through `(seconds, value)`
/// samples; `None` with fewer than 3 samples or less than `min_span` between
/// the first and the last.
pub fn fit_slope(samples: &[(f64, f64)], min_span: f64) -> Option<f64> {
    if samples.len() < 3 {
        return None;
    }
    let span = samples.last()?.0 - samples.first()?.0;
    if span < min_span {
        return None;
    }
    let n = samples.len() as f64;
    let (x0, y0) = samples[0];
    let mean_x = samples.iter().map(|(x, _)| x - x0).sum::<f64>() / n;
    let mean_y = samples.iter().map(|(_, y)| y - y0).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in samples {
        let dx = x - x0 - mean_x;
        sxy += dx * (y - y0 - mean_y);
        sxx += dx * dx;
    }
    if sxx == 0.0 { None } else { Some(sxy / sxx) }
}

/// Used bytes of each mount over the last [`FILL_WINDOW`], on a monotonic clock.
#[derive(Debug, Default)]
pub struct FillHistory {
    samples: HashMap<String, VecDeque<(Instant, u64)>>,
}

impl FillHistory {
    /// Adds the round's samples, forgets mounts not in it, and sets each
    /// observation's fill rate and time to full.
    pub fn update(&mut self, disks: &mut [DiskObservation], at: Instant) {
        self.samples
            .retain(|m, _| disks.iter().any(|d| &d.mount == m));
        for d in disks {
            let h = self.samples.entry(d.mount.clone()).or_default();
            h.push_back((at, d.used_bytes));
            while h
                .front()
                .is_some_and(|(t, _)| at.duration_since(*t) > FILL_WINDOW)
            {
                h.pop_front();
            }
            let base = h.front().map(|(t, _)| *t).unwrap_or(at);
            let points: Vec<(f64, f64)> = h
                .iter()
                .map(|(t, used)| (t.duration_since(base).as_secs_f64(), *used as f64))
                .collect();
            let rate = fit_slope(&points, FILL_MIN_SPAN.as_secs_f64());
            d.fill_rate_bytes_per_second = rate;
            d.seconds_to_full = rate
                .filter(|r| *r > 0.0)
                .map(|r| d.available_bytes as f64 / r);
        }
    }
}

/// One round: mountinfo, then `statvfs` of each selected mount. Blocking.
fn read_round(wanted: Option<&[String]>, seen_at: DateTime<Utc>) -> (Vec<DiskObservation>, u64) {
    let mut errors = 0u64;
    let text = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "disks: cannot read /proc/self/mountinfo; no disk sampled this round");
            return (Vec::new(), 1);
        }
    };
    let (entries, bad) = parse_mountinfo(&text);
    for (line, why) in &bad {
        tracing::warn!(line, error = %why, "disks: cannot read a line of /proc/self/mountinfo; skipped");
        errors += 1;
    }
    let (mounts, missing) = select_mounts(&entries, wanted);
    for m in &missing {
        tracing::warn!(mount = %m, "disks: a watched mount is not mounted; skipped");
        errors += 1;
    }
    let mut out = Vec::with_capacity(mounts.len());
    for e in &mounts {
        match nix::sys::statvfs::statvfs(PathBuf::from(&e.mount_point).as_path()) {
            // the field types are narrower on some targets
            #[allow(clippy::unnecessary_cast)]
            Ok(s) => out.push(observe(
                e,
                Usage {
                    blocks: s.blocks() as u64,
                    blocks_free: s.blocks_free() as u64,
                    blocks_available: s.blocks_available() as u64,
                    fragment_size: s.fragment_size() as u64,
                    files: s.files() as u64,
                    files_free: s.files_free() as u64,
                    files_available: s.files_available() as u64,
                },
                seen_at,
            )),
            Err(errno) => {
                tracing::warn!(mount = %e.mount_point, error = %errno, "disks: statvfs failed; mount skipped this round");
                errors += 1;
            }
        }
    }
    (out, errors)
}

pub struct DiskWatcher {
    settings: DiskWatchSettings,
    tx: mpsc::Sender<DiskEvent>,
}

impl DiskWatcher {
    pub fn new(settings: DiskWatchSettings, tx: mpsc::Sender<DiskEvent>) -> DiskWatcher {
        DiskWatcher { settings, tx }
    }

    /// Samples every `interval` until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        if self.settings.mounts.as_ref().is_some_and(|m| m.is_empty()) {
            tracing::info!("disks: no mount is watched ([watch] disks = [])");
            return;
        }
        let mut history = FillHistory::default();
        let mut ticks = tokio::time::interval(self.settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let wanted = self.settings.mounts.clone();
            let job =
                tokio::task::spawn_blocking(move || read_round(wanted.as_deref(), Utc::now()));
            // A round stuck in a hung file system delays the next one; rounds never pile up.
            let (mut disks, errors) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = job => r.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "disks: the reading task failed");
                    (Vec::new(), 1)
                }),
            };
            history.update(&mut disks, Instant::now());
            let at = disks.first().map(|d| d.seen_at).unwrap_or_else(Utc::now);
            if self.tx.send(DiskEvent { at, disks, errors }).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(device: &str, mount: &str, fs: &str) -> MountEntry {
        MountEntry {
            device: device.into(),
            mount_point: mount.into(),
            fs_type: fs.into(),
            source: "/dev/x".into(),
        }
    }

    #[test]
    fn mountinfo_lines() {
        // (line, Ok((device, mount point, type, source)) or Err(part of the message))
        type Want = Result<(&'static str, &'static str, &'static str, &'static str), &'static str>;
        let cases: &[(&str, Want)] = &[
            (
                "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
                Ok(("98:0", "/mnt2", "ext3", "/dev/root")),
            ),
            (
                "25 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw",
                Ok(("259:2", "/", "ext4", "/dev/nvme0n1p2")),
            ),
            // no optional field
            (
                "30 25 0:26 / /run rw,nosuid - tmpfs tmpfs rw,size=1g",
                Ok(("0:26", "/run", "tmpfs", "tmpfs")),
            ),
            // several optional fields
            (
                "40 25 8:17 / /srv rw shared:5 master:2 propagate_from:1 - xfs /dev/sdb1 rw",
                Ok(("8:17", "/srv", "xfs", "/dev/sdb1")),
            ),
            // escaped space and backslash in the mount point
            (
                r"41 25 8:18 / /media/my\040disk\134x rw - vfat /dev/sdc1 rw",
                Ok(("8:18", "/media/my disk\\x", "vfat", "/dev/sdc1")),
            ),
            // a bind mount: root inside the file system
            (
                "50 25 259:2 /nix/store /nix/store ro,relatime shared:2 - ext4 /dev/nvme0n1p2 rw",
                Ok(("259:2", "/nix/store", "ext4", "/dev/nvme0n1p2")),
            ),
            (
                "36 35 98:0 /mnt1 /mnt2 rw,noatime ext3 /dev/root",
                Err("separator"),
            ),
            ("36 35 98:0 /mnt1 - ext3 /dev/root rw", Err("fields before")),
            ("36 35 980 / / rw - ext3 /dev/root rw", Err("major:minor")),
            ("36 35 a:b / / rw - ext3 /dev/root rw", Err("major:minor")),
            ("36 35 8:1 / / rw -", Err("type")),
            ("36 35 8:1 / / rw - ext4", Err("source")),
        ];
        for (line, want) in cases {
            let got = parse_mountinfo_line(line);
            match (got, want) {
                (Ok(e), Ok((dev, mount, fs, src))) => {
                    assert_eq!(
                        (
                            e.device.as_str(),
                            e.mount_point.as_str(),
                            e.fs_type.as_str(),
                            e.source.as_str()
                        ),
                        (*dev, *mount, *fs, *src),
                        "{line}"
                    );
                }
                (Err(why), Err(frag)) => assert!(why.contains(frag), "{line}: {why}"),
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bad_lines_are_reported_and_skipped() {
        let text =
            "25 1 259:2 / / rw - ext4 /dev/a rw\ngarbage\n\n26 25 0:5 / /proc rw - proc proc rw\n";
        let (entries, errors) = parse_mountinfo(text);
        assert_eq!(entries.len(), 2);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 2);
    }

    #[test]
    fn exclusions_follow_node_exporter() {
        let cases = [
            ("/", "ext4", false),
            ("/boot", "vfat", false),
            ("/run", "tmpfs", false),
            ("/proc", "proc", true),
            ("/sys/fs/cgroup", "cgroup2", true),
            ("/sys/kernel/debug", "debugfs", true),
            ("/dev", "devtmpfs", true),
            ("/dev/shm", "tmpfs", true),
            ("/devices", "ext4", false),
            ("/run/credentials/x.service", "ramfs", true),
            (
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs",
                "ext4",
                true,
            ),
            ("/var/lib/docker/overlay2/abc/merged", "overlay", true),
            ("/var/lib/docker/volumes", "ext4", true),
            ("/var/lib/containers/storage/overlay", "xfs", true),
            ("/snap/core/1", "squashfs", true),
            ("/mnt/cd", "iso9660", true),
            ("/run/user/1000/doc", "fuse.portal", false),
            ("/proc/sys/fs/binfmt_misc", "binfmt_misc", true),
        ];
        for (mount, fs, ignored) in cases {
            assert_eq!(
                is_ignored(&entry("1:1", mount, fs)),
                ignored,
                "{mount} {fs}"
            );
        }
    }

    #[test]
    fn one_entry_per_device_under_the_shortest_mount_point() {
        let entries = [
            entry("259:2", "/", "ext4"),
            entry("259:2", "/nix/store", "ext4"),
            entry("0:26", "/run", "tmpfs"),
            entry("0:26", "/run/wrappers", "tmpfs"),
            entry("259:1", "/boot", "vfat"),
            entry("0:5", "/proc", "proc"),
            entry("8:1", "/srv/b", "xfs"),
            entry("8:1", "/srv/a", "xfs"),
        ];
        let (got, missing) = select_mounts(&entries, None);
        let mounts: Vec<&str> = got.iter().map(|e| e.mount_point.as_str()).collect();
        assert_eq!(mounts, ["/", "/boot", "/run", "/srv/a"]);
        assert!(missing.is_empty());
        let wanted = [
            "/nix/store".to_string(),
            "/data".to_string(),
            "/".to_string(),
        ];
        let (got, missing) = select_mounts(&entries, Some(&wanted));
        let mounts: Vec<&str> = got.iter().map(|e| e.mount_point.as_str()).collect();
        assert_eq!(mounts, ["/", "/nix/store"]);
        assert_eq!(missing, ["/data"]);
    }

    #[test]
    fn usage_ratios_count_only_what_unprivileged_users_may_use() {
        let e = entry("8:1", "/", "ext4");
        let u = Usage {
            blocks: 1000,
            blocks_free: 150,
            blocks_available: 100, // 50 reserved for root
            fragment_size: 4096,
            files: 100,
            files_free: 40,
            files_available: 40,
        };
        let o = observe(&e, u, DateTime::UNIX_EPOCH);
        assert_eq!(o.used_bytes, 850 * 4096);
        assert_eq!(o.available_bytes, 100 * 4096);
        assert!((o.used_ratio - 850.0 / 950.0).abs() < 1e-12);
        assert_eq!(o.inodes_used, Some(60));
        assert!((o.inodes_used_ratio.unwrap() - 0.6).abs() < 1e-12);
        let o = observe(
            &e,
            Usage {
                files: 0,
                files_free: 0,
                files_available: 0,
                ..u
            },
            DateTime::UNIX_EPOCH,
        );
        assert_eq!(o.inodes_used_ratio, None, "no inodes reported: skipped");
        let o = observe(
            &e,
            Usage {
                blocks: 0,
                blocks_free: 0,
                blocks_available: 0,
                ..u
            },
            DateTime::UNIX_EPOCH,
        );
        assert_eq!(o.used_ratio, 0.0);
    }

    #[test]
    fn fill_rate_is_a_least_squares_slope() {
        let line: Vec<(f64, f64)> = (0..40)
            .map(|i| (i as f64 * 10.0, 1000.0 + 5.0 * i as f64 * 10.0))
            .collect();
        assert!((fit_slope(&line, 300.0).unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(fit_slope(&line[..3], 300.0), None, "too short a span");
        assert_eq!(fit_slope(&line[..2], 0.0), None, "too few samples");
        // noise around a flat line
        let flat: Vec<(f64, f64)> = (0..40)
            .map(|i| {
                (
                    i as f64 * 10.0,
                    1000.0 + if i % 2 == 0 { 10.0 } else { -10.0 },
                )
            })
            .collect();
        assert!(fit_slope(&flat, 300.0).unwrap().abs() < 0.1);
    }

    #[test]
    fn fill_history_predicts_time_to_full_and_forgets_old_samples() {
        let e = entry("8:1", "/", "ext4");
        let mut h = FillHistory::default();
        let t0 = Instant::now();
        let mut last = None;
        for i in 0..=400u64 {
            // 1 MB/s growth, 1 GB available at the last sample
            let used = 1_000_000 * i;
            let mut d = vec![DiskObservation {
                used_bytes: used,
                available_bytes: 1_000_000_000,
                ..observe(
                    &e,
                    Usage {
                        blocks: 1,
                        blocks_free: 0,
                        blocks_available: 0,
                        fragment_size: 1,
                        files: 0,
                        files_free: 0,
                        files_available: 0,
                    },
                    DateTime::UNIX_EPOCH,
                )
            }];
            h.update(&mut d, t0 + Duration::from_secs(10 * i));
            if i == 20 {
                assert_eq!(
                    d[0].fill_rate_bytes_per_second, None,
                    "under 5 minutes of samples"
                );
            }
            last = Some(d.remove(0));
        }
        let last = last.unwrap();
        assert!((last.fill_rate_bytes_per_second.unwrap() - 100_000.0).abs() < 1e-3);
        assert!((last.seconds_to_full.unwrap() - 10_000.0).abs() < 1e-3);
        assert!(h.samples["/"].len() <= 361, "an hour of samples");
        h.update(&mut [], t0);
        assert!(h.samples.is_empty(), "a mount gone is forgotten");
    }
}
