//! Host paths as the validation stage sees them: lexical normalisation, symlink resolution inside
//! the host's root, and the protected paths.
//!
//! A bind source is judged on two spellings, and both must pass: its lexical normalisation
//! ([`normalize`], what Docker's own `filepath.Clean` makes of it) and its resolution
//! ([`resolve`], what the kernel will mount once every symlink is followed). They differ when a
//! `..` follows a symlink, or when a component is a symlink.
//!
//! A bind source must also keep away from every protected path in both directions: neither
//! inside one nor an ancestor of one ([`guarded`] lists them, with what each resolves to on the
//! host), and it must not cross a directory that others can write to ([`Resolved::open_dirs`]),
//! where any local user could plant or swap a symlink.

use std::collections::VecDeque;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

/// Host paths never bind-mounted, nor anything inside them: the system, its configuration and
/// state, every runtime socket (`/run`, `/var/run`), kernel interfaces. Besides these, `/`
/// itself and every top-level `/lib*` directory.
pub const PROTECTED: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/home", "/proc", "/root", "/run", "/sbin", "/sys", "/usr",
    "/var",
];

/// The container runtimes' state and sockets. They are inside [`PROTECTED`] as written; they are
/// listed again because a host may move them (`/var/lib/docker -> /srv/docker`): what each
/// resolves to is protected too, and so is every ancestor of it.
pub const RUNTIME: &[&str] = &[
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/docker",
    "/run/docker",
    "/var/run/containerd",
    "/run/containerd",
];

/// Most symlinks followed while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The lexical normal form of an absolute path: no empty, `.` or `..` component, no trailing
/// `/` (but `/` itself); `..` at the root stays at the root, as the kernel does. `None` when the
/// path is not absolute or holds a NUL.
pub fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// What a path resolves to on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The host path with every existing symlink followed (normal form).
    pub path: String,
    /// The final file's kind when it is a socket or a device node.
    pub special: Option<&'static str>,
    /// Whether the final file is a directory.
    pub is_dir: bool,
    /// The directories looked into on the way (host paths, normal form) that are writable by
    /// others (`o+w`, sticky or not): whoever can write there can swap what the path leads to.
    pub open_dirs: Vec<String>,
}

/// Why a path could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("is not an absolute path")]
    NotAbsolute,
    #[error("follows more than {MAX_LINKS} symlinks")]
    TooManyLinks,
    #[error("holds a symlink whose target is not UTF-8")]
    NotUtf8,
}

/// Resolves `path`, a host path, as the kernel would: component by component, each existing
/// symlink replaced by its target (an absolute target starts again at the host's root), `..`
/// applied to what has been resolved so far. The host's filesystem is read under `host_root`
/// (`/host` when the agent runs in a container) and nothing ever leaves it: `..` at the root
/// stays there. Components that do not exist are taken as written.
pub fn resolve(host_root: &Path, path: &str) -> Result<Resolved, ResolveError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ResolveError::NotAbsolute);
    }
    let mut todo: VecDeque<String> = components(path).collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    let mut open_dirs: Vec<String> = Vec::new();
    // Every component is looked at, even below a missing one: a later `..` can climb back to
    // existing directories and their symlinks.
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        // `c` is looked up in the directory resolved so far.
        let dir = format!("/{}", done.join("/"));
        if !open_dirs.contains(&dir) && writable_by_others(&host_root.join(done.join("/"))) {
            open_dirs.push(dir);
        }
        done.push(c);
        let on_host = host_root.join(done.join("/"));
        match std::fs::symlink_metadata(&on_host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(ResolveError::TooManyLinks);
                }
                let target = std::fs::read_link(&on_host).map_err(|_| ResolveError::NotUtf8)?;
                let target = target.to_str().ok_or(ResolveError::NotUtf8)?;
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                for (i, t) in components(target).enumerate() {
                    todo.insert(i, t);
                }
            }
            _ => {}
        }
    }
    let path = format!("/{}", done.join("/"));
    let meta = std::fs::symlink_metadata(host_root.join(done.join("/"))).ok();
    let special = meta.as_ref().and_then(|m| special_kind(m.file_type()));
    Ok(Resolved {
        path,
        special,
        is_dir: meta.is_some_and(|m| m.is_dir()),
        open_dirs,
    })
}

/// `a socket`, `a character device` or `a block device`; `None` for any other kind of file.
pub fn special_kind(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else {
        None
    }
}

/// Whether `dir` is a directory that others can write to.
fn writable_by_others(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.mode() & 0o002 != 0)
}

/// The components of a path but the empty and `.` ones (`..` is kept: it is resolved later).
fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
}

/// The protected path that the normalised `path` is or is inside, `None` when there is none.
/// `extra` adds more (normalised) protected paths.
pub fn protected<'a>(path: &str, extra: &'a [String]) -> Option<&'a str> {
    if path == "/" {
        return Some("/");
    }
    let top = path.split('/').nth(1).unwrap_or_default();
    if top.starts_with("lib") {
        return Some("/lib*");
    }
    PROTECTED
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .find(|p| is_under(path, p))
}

/// Every concrete protected path a bind source must neither be inside nor be an ancestor of:
/// [`PROTECTED`], [`RUNTIME`] and `extra` (normalised), each as written and as it resolves
/// under `host_root` (a protected path moved elsewhere by a symlink stays protected there).
pub fn guarded(host_root: &Path, extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for p in PROTECTED
        .iter()
        .chain(RUNTIME)
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let resolved = resolve(host_root, p).ok().map(|r| r.path);
        for form in std::iter::once(p.to_owned()).chain(resolved) {
            if !all.contains(&form) {
                all.push(form);
            }
        }
    }
    all
}

/// Whether the normalised `path` is `root` or inside it.
pub fn is_under(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes_every_spelling() {
        let cases = [
            ("/", Some("/")),
            ("//", Some("/")),
            ("/var/run/docker.sock", Some("/var/run/docker.sock")),
            ("/var/run//docker.sock", Some("/var/run/docker.sock")),
            ("/var/run/./docker.sock", Some("/var/run/docker.sock")),
            ("/var/lib/../run/docker.sock", Some("/var/run/docker.sock")),
            ("/var/run/docker.sock/", Some("/var/run/docker.sock")),
            ("/../../etc", Some("/etc")),
            ("/etc/..", Some("/")),
            ("/a/b/../../..", Some("/")),
            ("relative/path", None),
            ("~/x", None),
            ("./x", None),
            ("", None),
            ("/a\0b", None),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), want, "{raw:?}");
        }
    }

    #[test]
    fn protected_paths_and_roots() {
        let extra = vec!["/data/agent".to_owned()];
        for p in [
            "/",
            "/etc",
            "/etc/shadow",
            "/var/run/docker.sock",
            "/run/containerd/containerd.sock",
            "/run/dbus/system_bus_socket",
            "/lib",
            "/lib64/x",
            "/libx32",
            "/usr/bin",
            "/home/u",
            "/data/agent/agent.key",
        ] {
            assert!(protected(p, &extra).is_some(), "{p}");
        }
        for p in [
            "/srv",
            "/srv/etc",
            "/tmp/x",
            "/etcetera",
            "/variable",
            "/data/agentx",
            "/ETC",
        ] {
            assert_eq!(protected(p, &extra), None, "{p}");
        }
        assert!(is_under("/srv/a", "/srv") && is_under("/srv", "/srv") && is_under("/x", "/"));
        assert!(!is_under("/srvx", "/srv") && !is_under("/sr", "/srv"));
    }

    #[test]
    fn resolves_symlinks_inside_the_host_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("var/run")).expect("mkdir");
        std::fs::create_dir_all(r.join("tmp/t")).expect("mkdir");
        std::fs::write(r.join("var/run/docker.sock"), b"").expect("file");
        std::os::unix::fs::symlink("/var/run", r.join("tmp/t/abs")).expect("link");
        std::os::unix::fs::symlink("../../var/run", r.join("tmp/t/rel")).expect("link");
        std::os::unix::fs::symlink("../../../../../../var", r.join("tmp/t/escape")).expect("link");
        std::os::unix::fs::symlink("loop2", r.join("tmp/t/loop1")).expect("link");
        std::os::unix::fs::symlink("loop1", r.join("tmp/t/loop2")).expect("link");
        let path = |p: &str| resolve(r, p).map(|x| x.path);
        assert_eq!(
            path("/tmp/t/abs/docker.sock").as_deref(),
            Ok("/var/run/docker.sock")
        );
        assert_eq!(
            path("/tmp/t/rel/docker.sock").as_deref(),
            Ok("/var/run/docker.sock")
        );
        // `..` after a symlink goes up from its target, as the kernel does.
        assert_eq!(path("/tmp/t/abs/../lib").as_deref(), Ok("/var/lib"));
        // A target full of `..` stops at the host's root, never above it.
        assert_eq!(path("/tmp/t/escape/run").as_deref(), Ok("/var/run"));
        assert_eq!(path("/tmp/t/missing/../x").as_deref(), Ok("/tmp/t/x"));
        // A missing component does not stop the symlinks after a `..` from being followed.
        assert_eq!(
            path("/tmp/t/missing/../abs/docker.sock").as_deref(),
            Ok("/var/run/docker.sock")
        );
        assert_eq!(path("/tmp/t/loop1"), Err(ResolveError::TooManyLinks));
        assert_eq!(path("tmp"), Err(ResolveError::NotAbsolute));
    }

    /// A path segment: a plain name, or a protected-looking name.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,6}",
            Just("etc".to_owned()),
            Just("var".to_owned()),
            Just("run".to_owned()),
            Just("srv".to_owned()),
            Just("tmp".to_owned()),
        ]
    }

    /// Noise that leaves a path's meaning unchanged: `./`, an extra `/`, `x/..`.
    fn noise() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("./".to_owned()),
            Just("/".to_owned()),
            "[a-z]{1,4}/\\.\\./",
            Just(".//./".to_owned()),
        ]
    }

    fn spelled(segments: &[String], noise: &[String]) -> String {
        let mut s = String::from("/");
        for (i, seg) in segments.iter().enumerate() {
            s.push_str(&noise[i % noise.len()]);
            s.push_str(seg);
            s.push('/');
        }
        s
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent(raw in "(/|\\.|\\.\\.|[a-z]{1,3}){0,12}") {
            let raw = format!("/{raw}");
            let once = normalize(&raw).expect("absolute");
            prop_assert_eq!(normalize(&once), Some(once.clone()));
        }

        #[test]
        fn normal_forms_hold_no_dot_segments_or_double_slashes(raw in "(/|\\.|\\.\\.|[a-z.]{1,3}){0,12}") {
            let n = normalize(&format!("/{raw}")).expect("absolute");
            prop_assert!(n.starts_with('/'));
            prop_assert!(!n.contains("//"));
            prop_assert!(n == "/" || !n.ends_with('/'));
            prop_assert!(n.split('/').skip(1).all(|c| c != "." && c != ".."), "{}", n);
        }

        #[test]
        fn protection_does_not_depend_on_spelling(
            segments in proptest::collection::vec(segment(), 1..6),
            noise in proptest::collection::vec(noise(), 1..6),
        ) {
            let plain = format!("/{}", segments.join("/"));
            let noisy = spelled(&segments, &noise);
            let n = normalize(&noisy).expect("absolute");
            prop_assert_eq!(&n, &plain);
            // No host_root entries exist under this empty root, so resolution is lexical too.
            let root = std::env::temp_dir().join("tomo-test-paths-nonexistent-root");
            let resolved = resolve(&root, &noisy).expect("resolves").path;
            prop_assert_eq!(&resolved, &plain);
            prop_assert_eq!(protected(&n, &[]).is_some(), protected(&plain, &[]).is_some());
        }
    }
}
