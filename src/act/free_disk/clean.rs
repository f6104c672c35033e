//! Deleting old files under one configured directory, safely while other users
//! write there: every step goes through a directory file descriptor, a symlink
//! is never followed (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`), a directory on
//! another device is not entered, and only regular files whose name matches the
//! glob and whose mtime is older than the cutoff are unlinked.
//!
//! A directory opened by name is checked to be the one `fstatat` saw (device
//! and inode), so a directory swapped for another between the two calls is not
//! walked. `unlinkat` removes a name inside the directory held open; whatever a
//! name points to, nothing outside the tree is touched.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use serde::Serialize;

/// Directories nested deeper than this are left alone (and counted).
pub const MAX_DEPTH: usize = 64;

/// What one clean did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanReport {
    pub files_deleted: u64,
    /// The sizes of the files deleted (space comes back once the last link is gone).
    pub bytes_deleted: u64,
    pub files_kept_newer: u64,
    pub symlinks_skipped: u64,
    pub other_devices_skipped: u64,
    pub too_deep_skipped: u64,
    /// Names that could not be read or removed, with the error (at most 20 kept).
    pub errors: Vec<String>,
    pub error_count: u64,
    /// The deadline passed before the walk was done.
    pub timed_out: bool,
}

impl CleanReport {
    fn error(&mut self, what: &str, e: Errno) {
        self.error_count += 1;
        if self.errors.len() < 20 {
            self.errors.push(format!("{what}: {e}"));
        }
    }
}

/// Why a clean could not start.
#[derive(Debug, Clone, PartialEq)]
pub enum CleanError {
    /// The directory is not there (nothing to clean).
    Missing(String),
    /// It is reached through a symlink, lies on another device, or cannot be opened.
    Refused(String),
}

/// Opens `dir` (inside `mount`) component by component without following a
/// symlink or leaving the mount's device.
pub fn open_beneath(mount: &Path, dir: &Path) -> Result<(OwnedFd, FileStat), CleanError> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let fd = nix::fcntl::open(mount, flags, Mode::empty())
        .map_err(|e| CleanError::Refused(format!("{}: {e}", mount.display())))?;
    // SAFETY: `open` returned a new descriptor that nothing else owns.
    let mut fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let root = fstat(fd.as_raw_fd())
        .map_err(|e| CleanError::Refused(format!("{}: {e}", mount.display())))?;
    let rel = dir.strip_prefix(mount).map_err(|_| {
        CleanError::Refused(format!("{} is outside {}", dir.display(), mount.display()))
    })?;
    let mut st = root;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(CleanError::Refused(format!(
                "{}: not a plain path",
                dir.display()
            )));
        };
        let next = match openat(Some(fd.as_raw_fd()), name, flags, Mode::empty()) {
            Ok(n) => n,
            Err(Errno::ENOENT) => {
                return Err(CleanError::Missing(format!(
                    "{} does not exist",
                    dir.display()
                )));
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(CleanError::Refused(format!(
                    "{}: `{}` is a symlink or not a directory; not followed",
                    dir.display(),
                    name.to_string_lossy()
                )));
            }
            Err(e) => return Err(CleanError::Refused(format!("{}: {e}", dir.display()))),
        };
        // SAFETY: as above.
        fd = unsafe { OwnedFd::from_raw_fd(next) };
        st = fstat(fd.as_raw_fd())
            .map_err(|e| CleanError::Refused(format!("{}: {e}", dir.display())))?;
        if st.st_dev != root.st_dev {
            return Err(CleanError::Refused(format!(
                "{} is on another device than {}",
                dir.display(),
                mount.display()
            )));
        }
    }
    Ok((fd, st))
}

/// The rule one clean applies.
pub struct Rule<'a> {
    pub glob: &'a glob::Pattern,
    pub older_than: Duration,
    /// Files whose mtime is before this are old enough.
    pub now: SystemTime,
    pub deadline: Instant,
}

impl Rule<'_> {
    fn cutoff_secs(&self) -> i64 {
        let cutoff = self.now.checked_sub(self.older_than).unwrap_or(UNIX_EPOCH);
        match cutoff.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(_) => i64::MIN,
        }
    }
}

/// Deletes what `rule` selects in the tree below the open directory `fd`.
pub fn clean(fd: OwnedFd, st: &FileStat, rule: &Rule<'_>) -> CleanReport {
    let mut report = CleanReport::default();
    let cutoff = rule.cutoff_secs();
    walk(fd, st.st_dev, 0, rule, cutoff, &mut report);
    report
}

fn is_type(st: &FileStat, t: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == t
}

fn walk(fd: OwnedFd, dev: u64, depth: usize, rule: &Rule<'_>, cutoff: i64, r: &mut CleanReport) {
    let raw: RawFd = fd.as_raw_fd();
    // Dir closes what it is given: it gets its own duplicate.
    let names: Vec<CString> = match nix::unistd::dup(raw).and_then(Dir::from_fd) {
        Ok(mut dir) => dir
            .iter()
            .filter_map(|e| match e {
                Ok(e) => Some(e.file_name().to_owned()),
                Err(err) => {
                    r.error("readdir", err);
                    None
                }
            })
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect(),
        Err(e) => {
            r.error("opendir", e);
            return;
        }
    };
    for name in names {
        if Instant::now() >= rule.deadline {
            r.timed_out = true;
            return;
        }
        let shown = name.to_string_lossy().into_owned();
        let st = match fstatat(
            Some(raw),
            name.as_c_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                r.error(&shown, e);
                continue;
            }
        };
        if is_type(&st, SFlag::S_IFLNK) {
            r.symlinks_skipped += 1;
        } else if is_type(&st, SFlag::S_IFDIR) {
            if st.st_dev != dev {
                r.other_devices_skipped += 1;
                continue;
            }
            if depth + 1 >= MAX_DEPTH {
                r.too_deep_skipped += 1;
                continue;
            }
            if let Some(sub) = open_dir_at(raw, &name, &st, r) {
                walk(sub, dev, depth + 1, rule, cutoff, r);
                if r.timed_out {
                    return;
                }
            }
        } else if is_type(&st, SFlag::S_IFREG) {
            if !matches_name(rule.glob, &name) {
                continue;
            }
            if st.st_mtime >= cutoff {
                r.files_kept_newer += 1;
                continue;
            }
            match unlinkat(Some(raw), name.as_c_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {
                    r.files_deleted += 1;
                    r.bytes_deleted += st.st_size.max(0) as u64;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => r.error(&shown, e),
            }
        }
    }
}

/// Opens a subdirectory and checks it is the one `fstatat` saw.
fn open_dir_at(
    parent: RawFd,
    name: &CStr,
    seen: &FileStat,
    r: &mut CleanReport,
) -> Option<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let shown = name.to_string_lossy();
    match openat(Some(parent), name, flags, Mode::empty()) {
        Ok(fd) => {
            // SAFETY: `openat` returned a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            match fstat(fd.as_raw_fd()) {
                Ok(st) if st.st_dev == seen.st_dev && st.st_ino == seen.st_ino => Some(fd),
                Ok(_) => {
                    r.error(&shown, Errno::ESTALE);
                    None
                }
                Err(e) => {
                    r.error(&shown, e);
                    None
                }
            }
        }
        // replaced by a symlink since fstatat
        Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
            r.symlinks_skipped += 1;
            None
        }
        Err(Errno::ENOENT) => None,
        Err(e) => {
            r.error(&shown, e);
            None
        }
    }
}

fn matches_name(glob: &glob::Pattern, name: &CStr) -> bool {
    let os = OsStr::from_bytes(name.to_bytes());
    match os.to_str() {
        Some(s) => glob.matches(s),
        // a name that is not UTF-8 matches only the catch-all
        None => glob.as_str() == "*",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn set_old(path: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    fn write(path: &Path, bytes: usize, secs_ago: u64) {
        fs::write(path, vec![b'x'; bytes]).unwrap();
        set_old(path, secs_ago);
    }

    fn run(mount: &Path, dir: &Path, glob: &str, older: u64) -> CleanReport {
        let (fd, st) = open_beneath(mount, dir).unwrap();
        let glob = glob::Pattern::new(glob).unwrap();
        clean(
            fd,
            &st,
            &Rule {
                glob: &glob,
                older_than: Duration::from_secs(older),
                now: SystemTime::now(),
                deadline: Instant::now() + Duration::from_secs(30),
            },
        )
    }

    #[test]
    fn only_old_regular_files_matching_the_glob_go() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path();
        let cache = mount.join("cache");
        let outside = mount.join("keep");
        fs::create_dir_all(cache.join("sub/deeper")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        write(&cache.join("old.log"), 1000, 7200);
        write(&cache.join("sub/deeper/old.log"), 500, 7200);
        write(&cache.join("old.bin"), 300, 7200);
        write(&cache.join("fresh.log"), 100, 10);
        write(&outside.join("old-outside.log"), 100, 7200);
        // a symlink to an old file outside, and to a directory outside
        symlink(outside.join("old-outside.log"), cache.join("link.log")).unwrap();
        symlink(&outside, cache.join("linkdir")).unwrap();

        let r = run(mount, &cache, "*.log", 1800);
        assert_eq!(r.files_deleted, 2, "{r:?}");
        assert_eq!(r.bytes_deleted, 1500);
        assert_eq!(r.files_kept_newer, 1);
        assert_eq!(r.symlinks_skipped, 2);
        assert!(!cache.join("old.log").exists());
        assert!(!cache.join("sub/deeper/old.log").exists());
        assert!(cache.join("old.bin").exists(), "the glob did not match");
        assert!(cache.join("fresh.log").exists());
        assert!(
            outside.join("old-outside.log").exists(),
            "a symlink was followed"
        );
        assert!(
            cache.join("link.log").symlink_metadata().is_ok(),
            "the link itself stays"
        );
        assert!(cache.join("sub/deeper").is_dir(), "directories stay");
    }

    #[test]
    fn a_symlinked_clean_path_is_refused_and_a_missing_one_reported() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path();
        fs::create_dir_all(mount.join("real")).unwrap();
        write(&mount.join("real/old"), 10, 7200);
        symlink(mount.join("real"), mount.join("cache")).unwrap();
        let err = open_beneath(mount, &mount.join("cache")).unwrap_err();
        assert!(
            matches!(&err, CleanError::Refused(m) if m.contains("symlink")),
            "{err:?}"
        );
        assert!(mount.join("real/old").exists());
        let err = open_beneath(mount, &mount.join("nothing/here")).unwrap_err();
        assert!(matches!(err, CleanError::Missing(_)), "{err:?}");
        let err = open_beneath(mount, Path::new("/etc")).unwrap_err();
        assert!(matches!(err, CleanError::Refused(_)));
    }

    #[test]
    fn a_passed_deadline_stops_the_walk() {
        let t = tempfile::tempdir().unwrap();
        write(&t.path().join("old"), 10, 7200);
        let (fd, st) = open_beneath(t.path(), t.path()).unwrap();
        let glob = glob::Pattern::new("*").unwrap();
        let r = clean(
            fd,
            &st,
            &Rule {
                glob: &glob,
                older_than: Duration::from_secs(60),
                now: SystemTime::now(),
                deadline: Instant::now(),
            },
        );
        assert!(r.timed_out);
        assert_eq!(r.files_deleted, 0);
        assert!(t.path().join("old").exists());
    }
}
