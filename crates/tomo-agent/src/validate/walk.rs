//! The bounded walk of a directory bind source: a directory that holds a host unix socket or a
//! device node hands it to the container (a root-owned `0600` socket is reachable as root inside
//! it), so such a directory is refused.
//!
//! The walk does not follow symlinks (inside a bind mount the container resolves them in its own
//! filesystem) and it does go into file systems mounted below the directory (Docker binds
//! recursively). It is bounded ([`Bounds::DEFAULT`]: 32 levels, 50 000 entries, 2 s); a
//! directory that reaches a bound, or that the agent cannot read, is refused as well: what was
//! not looked at is not known to be safe.

use std::path::Path;
use std::time::{Duration, Instant};

/// How far a walk goes before it gives up (and the directory is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Levels below the directory itself.
    pub depth: usize,
    /// Entries looked at, all levels together.
    pub entries: usize,
    /// Time for the whole walk.
    pub time: Duration,
}

impl Bounds {
    /// The bounds of every bind-source walk.
    pub const DEFAULT: Self = Self {
        depth: 32,
        entries: 50_000,
        time: Duration::from_secs(2),
    };
}

/// Why a directory is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("holds {kind} ({path}): sockets and devices are never bind-mounted")]
    Special { path: String, kind: &'static str },
    #[error("is nested deeper than {0} levels: too deep to be looked through before binding")]
    TooDeep(usize),
    #[error("holds more than {0} entries: too many to be looked through before binding")]
    TooMany(usize),
    #[error("could not be looked through within {0:?}")]
    TooSlow(Duration),
    #[error("cannot be read by the agent ({path}: {why}): what it holds is not known")]
    Unreadable { path: String, why: String },
}

/// Looks through `dir` (a host path as the agent sees it) for a socket or a device node within
/// `bounds`; `shown` is how paths are named in the error (the bind source as given).
pub fn check_dir(dir: &Path, shown: &str, bounds: Bounds) -> Result<(), WalkError> {
    let started = Instant::now();
    let mut entries = 0usize;
    // (directory on the host, its name in messages, its depth)
    let mut todo = vec![(dir.to_path_buf(), shown.trim_end_matches('/').to_owned(), 0)];
    while let Some((here, name, depth)) = todo.pop() {
        let unreadable = |e: std::io::Error| WalkError::Unreadable {
            path: name.clone(),
            why: e.kind().to_string(),
        };
        for entry in std::fs::read_dir(&here).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            entries += 1;
            if entries > bounds.entries {
                return Err(WalkError::TooMany(bounds.entries));
            }
            if entries.is_multiple_of(256) && started.elapsed() > bounds.time {
                return Err(WalkError::TooSlow(bounds.time));
            }
            let kind = entry.file_type().map_err(unreadable)?;
            let child = format!("{name}/{}", entry.file_name().to_string_lossy());
            if let Some(kind) = super::paths::special_kind(kind) {
                return Err(WalkError::Special { path: child, kind });
            }
            if kind.is_dir() {
                if depth + 1 > bounds.depth {
                    return Err(WalkError::TooDeep(bounds.depth));
                }
                todo.push((entry.path(), child, depth + 1));
            }
        }
        if started.elapsed() > bounds.time {
            return Err(WalkError::TooSlow(bounds.time));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(depth: usize, entries: usize) -> Bounds {
        Bounds {
            depth,
            entries,
            time: Duration::from_secs(10),
        }
    }

    #[test]
    fn finds_a_socket_below_and_ignores_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b/c")).expect("mkdir");
        std::fs::write(d.join("a/file"), b"x").expect("file");
        // A symlink to a socket elsewhere is resolved by the container in its own tree.
        std::os::unix::fs::symlink("/var/run/docker.sock", d.join("a/link")).expect("link");
        assert_eq!(check_dir(d, "/srv/x", Bounds::DEFAULT), Ok(()));
        let _listener =
            std::os::unix::net::UnixListener::bind(d.join("a/b/c/s.sock")).expect("bind");
        assert_eq!(
            check_dir(d, "/srv/x", Bounds::DEFAULT),
            Err(WalkError::Special {
                path: "/srv/x/a/b/c/s.sock".into(),
                kind: "a socket"
            })
        );
    }

    #[test]
    fn refuses_when_a_bound_is_hit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("1/2/3")).expect("mkdir");
        for i in 0..5 {
            std::fs::write(d.join(format!("f{i}")), b"").expect("file");
        }
        // 1, 2 and 3 are three levels below; the files and `1` are six entries at the top.
        assert_eq!(check_dir(d, "/s", bounds(3, 100)), Ok(()));
        assert_eq!(
            check_dir(d, "/s", bounds(2, 100)),
            Err(WalkError::TooDeep(2))
        );
        assert_eq!(check_dir(d, "/s", bounds(3, 8)), Ok(()));
        assert_eq!(check_dir(d, "/s", bounds(3, 7)), Err(WalkError::TooMany(7)));
        let slow = Bounds {
            time: Duration::ZERO,
            ..bounds(3, 100)
        };
        assert_eq!(
            check_dir(d, "/s", slow),
            Err(WalkError::TooSlow(Duration::ZERO))
        );
    }

    #[test]
    fn an_unreadable_directory_is_not_known_to_be_safe() {
        let missing = Path::new("/nonexistent-tomo-walk-test");
        assert!(matches!(
            check_dir(missing, "/srv/gone", Bounds::DEFAULT),
            Err(WalkError::Unreadable { path, .. }) if path == "/srv/gone"
        ));
    }
}
