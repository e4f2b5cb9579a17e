//! `system.prepare_volumes`: directories with an owner and a mode, only under the volume base.
//!
//! Every entry is checked before anything is created: the path (relative, or absolute inside
//! the base; no `..`), the mode, the owner, and every component that already exists (a
//! directory, never a symbolic link). Creation then walks down from the base one directory file
//! descriptor at a time (`openat` with `O_NOFOLLOW`, `mkdirat`), so a symbolic link planted
//! between the check and the creation is refused too, and owner and mode are set on the
//! opened directory, never through a path.

use std::ffi::OsStr;
use std::fs::{DirBuilder, File, Permissions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use serde_json::json;
use tomo_proto::methods::{PreparedVolume, PreparedVolumes, VolumeDir};
use tomo_proto::rpc::RpcError;

/// Most directories one call prepares.
pub const MAX_VOLUMES: usize = 256;
/// Longest path accepted, bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Mode of a directory when the caller names none, and of the base and of intermediate
/// directories the agent creates on the way.
pub const DEFAULT_MODE: u32 = 0o755;

/// One checked entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checked {
    /// `volumes[i]`, to name the parameter in errors.
    param: String,
    /// Relative to the base, only normal components, at least one.
    rel: PathBuf,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
}

/// Prepares `volumes` under `base`, all or nothing as far as validation goes. `euid` is the
/// agent's effective user id: only root may give a directory to another user.
pub fn prepare(base: &Path, volumes: &[VolumeDir], euid: u32) -> Result<PreparedVolumes, RpcError> {
    if !base.is_absolute() {
        return Err(RpcError::internal(format!(
            "the volume base {} is not an absolute path",
            base.display()
        )));
    }
    if volumes.len() > MAX_VOLUMES {
        return Err(invalid("volumes", format!("at most {MAX_VOLUMES} entries")));
    }
    let canonical = std::fs::canonicalize(base).ok();
    let checked = volumes
        .iter()
        .enumerate()
        .map(|(i, v)| check_entry(i, v, base, canonical.as_deref(), euid))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(root) = &canonical {
        for c in &checked {
            check_existing(root, c)?;
        }
    }
    let root = create_base(base)?;
    let prepared = checked
        .iter()
        .map(|c| apply(&root, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PreparedVolumes {
        base: root.display().to_string(),
        volumes: prepared,
    })
}

fn invalid(param: &str, why: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(format!("{param}: {why}")).with_data(json!({ "param": param }))
}

/// Checks one entry on its own: path, mode, owner.
fn check_entry(
    i: usize,
    v: &VolumeDir,
    base: &Path,
    canonical: Option<&Path>,
    euid: u32,
) -> Result<Checked, RpcError> {
    let param = format!("volumes[{i}]");
    let path_param = format!("{param}.path");
    let rel = relative_path(&v.path, base, canonical).map_err(|why| invalid(&path_param, why))?;
    let mode =
        parse_mode(v.mode.as_deref()).map_err(|why| invalid(&format!("{param}.mode"), why))?;
    for (field, id) in [("uid", v.uid), ("gid", v.gid)] {
        if id == Some(u32::MAX) {
            return Err(invalid(
                &format!("{param}.{field}"),
                "4294967295 is not an id",
            ));
        }
    }
    if let Some(uid) = v.uid.filter(|&u| euid != 0 && u != euid) {
        return Err(invalid(
            &format!("{param}.uid"),
            format!(
                "the agent runs as uid {euid}, not root: it cannot give a directory to uid {uid}"
            ),
        ));
    }
    Ok(Checked {
        param,
        rel,
        uid: v.uid,
        gid: v.gid,
        mode,
    })
}

/// The path relative to the base: normal components only, at least one.
fn relative_path(path: &str, base: &Path, canonical: Option<&Path>) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("longer than {MAX_PATH_BYTES} bytes"));
    }
    if path.contains('\0') {
        return Err("NUL in the path".into());
    }
    let p = Path::new(path);
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("`..` is not allowed".into());
    }
    let inside = if p.is_absolute() {
        p.strip_prefix(base)
            .ok()
            .or_else(|| canonical.and_then(|c| p.strip_prefix(c).ok()))
            .ok_or_else(|| format!("{path} is outside the volume base {}", base.display()))?
    } else {
        p
    };
    let rel: PathBuf = inside
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    if rel.as_os_str().is_empty() {
        return Err("names the volume base itself".into());
    }
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!("{path} is not a plain path"));
    }
    Ok(rel)
}

/// `"0750"` or `"750"`: octal permission bits, no setuid, setgid or sticky bit.
fn parse_mode(mode: Option<&str>) -> Result<u32, String> {
    let Some(s) = mode else {
        return Ok(DEFAULT_MODE);
    };
    let bad = || format!("{s:?} is not an octal mode such as \"0755\"");
    if !(3..=4).contains(&s.len()) || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let m = u32::from_str_radix(s, 8).map_err(|_| bad())?;
    if m > 0o777 {
        return Err(format!(
            "{s:?}: setuid, setgid and sticky bits are not allowed"
        ));
    }
    Ok(m)
}

/// Walks the components that already exist, without following any: each must be a directory.
fn check_existing(root: &Path, c: &Checked) -> Result<(), RpcError> {
    let param = format!("{}.path", c.param);
    let mut cur = root.to_path_buf();
    for name in c.rel.components() {
        cur.push(name);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(
                    &param,
                    format!("{} is a symbolic link", cur.display()),
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(invalid(
                    &param,
                    format!("{} exists and is not a directory", cur.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(RpcError::internal(format!("{}: {e}", cur.display())));
            }
        }
    }
    Ok(())
}

/// Creates the base (0755) when missing; its canonical path.
fn create_base(base: &Path) -> Result<PathBuf, RpcError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DEFAULT_MODE)
        .create(base)
        .and_then(|()| std::fs::canonicalize(base))
        .map_err(|e| {
            RpcError::internal(format!(
                "cannot create the volume base {}: {e}",
                base.display()
            ))
        })
}

/// Creates what is missing of one entry, one directory descriptor at a time, then sets its
/// owner and mode.
fn apply(root: &Path, c: &Checked) -> Result<PreparedVolume, RpcError> {
    let full = root.join(&c.rel);
    let io_err = |what: &str, e: &dyn std::fmt::Display| {
        RpcError::internal(format!("{what} {}: {e}", full.display()))
    };
    let mut dir = rustix::fs::open(root, dir_flags(), Mode::empty())
        .map_err(|e| io_err("cannot open the base for", &e))?;
    let names: Vec<&OsStr> = c.rel.iter().collect();
    let mut created = false;
    for (k, name) in names.iter().enumerate() {
        let last = k + 1 == names.len();
        let mode = if last { c.mode } else { DEFAULT_MODE };
        let (next, made) = open_or_create(&dir, name, mode).map_err(|e| match e {
            Errno::LOOP | Errno::NOTDIR => invalid(
                &format!("{}.path", c.param),
                format!(
                    "{} holds a symbolic link or a non-directory",
                    full.display()
                ),
            ),
            e => io_err("cannot create", &e),
        })?;
        dir = next;
        created = made;
    }
    let dir = File::from(dir);
    if c.uid.is_some() || c.gid.is_some() {
        std::os::unix::fs::fchown(&dir, c.uid, c.gid).map_err(|e| io_err("cannot chown", &e))?;
    }
    dir.set_permissions(Permissions::from_mode(c.mode))
        .map_err(|e| io_err("cannot chmod", &e))?;
    let meta = dir.metadata().map_err(|e| io_err("cannot stat", &e))?;
    Ok(PreparedVolume {
        path: full.display().to_string(),
        created,
        uid: meta.uid(),
        gid: meta.gid(),
        mode: format!("{:04o}", meta.mode() & 0o7777),
    })
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Opens the directory `name` in `dir` without following a symbolic link, creating it (with
/// `mode`, less the umask) when missing. Whether it was created.
fn open_or_create(dir: &OwnedFd, name: &OsStr, mode: u32) -> Result<(OwnedFd, bool), Errno> {
    match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok((fd, false)),
        Err(Errno::NOENT) => {
            let made = match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
                Ok(()) => true,
                // Created by someone else meanwhile: open it like any existing directory.
                Err(Errno::EXIST) => false,
                Err(e) => return Err(e),
            };
            let fd = rustix::fs::openat(dir, name, dir_flags(), Mode::empty())?;
            Ok((fd, made))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(path: &str, mode: Option<&str>) -> VolumeDir {
        VolumeDir {
            path: path.into(),
            uid: None,
            gid: None,
            mode: mode.map(str::to_owned),
        }
    }

    fn euid() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn creates_sets_mode_and_is_idempotent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("vols");
        let want = [vol("app/data", Some("0750")), vol("./logs", None)];
        let first = prepare(&base, &want, euid()).expect("prepare");
        let root = std::fs::canonicalize(&base).expect("base exists");
        assert_eq!(first.base, root.display().to_string());
        assert_eq!(mode_of(&root), 0o755);
        let summary: Vec<_> = first
            .volumes
            .iter()
            .map(|v| (v.path.clone(), v.created, v.mode.clone()))
            .collect();
        let at = |rel: &str| root.join(rel).display().to_string();
        assert_eq!(
            summary,
            [
                (at("app/data"), true, "0750".to_owned()),
                (at("logs"), true, "0755".to_owned()),
            ]
        );
        assert_eq!(mode_of(&root.join("app/data")), 0o750);
        assert!(first.volumes.iter().all(|v| v.uid == euid()));

        let again = prepare(&base, &want, euid()).expect("again");
        assert!(again.volumes.iter().all(|v| !v.created), "{again:?}");
        assert_eq!(again.volumes[0].mode, "0750");

        // An existing directory gets the mode asked for now.
        let looser = prepare(&base, &[vol("app/data", Some("775"))], euid()).expect("chmod");
        assert_eq!(looser.volumes[0].mode, "0775");
        assert_eq!(mode_of(&root.join("app/data")), 0o775);
    }

    #[test]
    fn accepts_absolute_paths_inside_the_base() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("vols");
        let inside = base.join("abs/dir").display().to_string();
        let got = prepare(&base, &[vol(&inside, None)], euid()).expect("prepare");
        assert!(got.volumes[0].created);
        assert!(base.join("abs/dir").is_dir());
    }

    #[test]
    fn refuses_bad_entries_and_creates_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("vols");
        std::fs::create_dir(&base).expect("base");
        let outside = tmp.path().join("outside");
        // (entry, offending parameter)
        let cases = [
            (vol("../x", None), "volumes[1].path"),
            (vol("a/../../x", None), "volumes[1].path"),
            (vol("a/..", None), "volumes[1].path"),
            (vol("/etc/x", None), "volumes[1].path"),
            (vol(&outside.display().to_string(), None), "volumes[1].path"),
            (
                vol(&format!("{}/../x", base.display()), None),
                "volumes[1].path",
            ),
            (vol("", None), "volumes[1].path"),
            (vol(".", None), "volumes[1].path"),
            (vol(&base.display().to_string(), None), "volumes[1].path"),
            (vol("a\0b", None), "volumes[1].path"),
            (
                vol(&"a".repeat(MAX_PATH_BYTES + 1), None),
                "volumes[1].path",
            ),
            (vol("x", Some("4755")), "volumes[1].mode"),
            (vol("x", Some("2755")), "volumes[1].mode"),
            (vol("x", Some("1777")), "volumes[1].mode"),
            (vol("x", Some("0o755")), "volumes[1].mode"),
            (vol("x", Some("999")), "volumes[1].mode"),
            (vol("x", Some("75")), "volumes[1].mode"),
            (vol("x", Some("00755")), "volumes[1].mode"),
            (vol("x", Some("rwx")), "volumes[1].mode"),
            (
                VolumeDir {
                    uid: Some(u32::MAX),
                    ..vol("x", None)
                },
                "volumes[1].uid",
            ),
            (
                VolumeDir {
                    gid: Some(u32::MAX),
                    ..vol("x", None)
                },
                "volumes[1].gid",
            ),
        ];
        for (bad, param) in cases {
            let e = prepare(&base, &[vol("fine", None), bad.clone()], euid())
                .expect_err(&format!("{bad:?}"));
            assert_eq!(e.code, tomo_proto::rpc::code::INVALID_PARAMS, "{bad:?}");
            assert_eq!(e.data, Some(json!({ "param": param })), "{bad:?}: {e}");
        }
        assert!(
            !base.join("fine").exists(),
            "a refused call created something"
        );
        assert!(!outside.exists());
    }

    #[test]
    fn refuses_symlinks_and_files_in_the_way() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("vols");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(base.join("real")).expect("dirs");
        std::fs::create_dir(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, base.join("link")).expect("symlink");
        std::os::unix::fs::symlink(&outside, base.join("real/deep")).expect("symlink");
        std::fs::write(base.join("file"), b"x").expect("file");
        let before = mode_of(&outside);
        for path in [
            "link",
            "link/x",
            "real/deep",
            "real/deep/x",
            "file",
            "file/x",
        ] {
            // 0700 differs from the umask's default: a followed link would show on `outside`.
            let e = prepare(&base, &[vol(path, Some("0700"))], euid()).expect_err(path);
            assert_eq!(
                e.data,
                Some(json!({"param": "volumes[0].path"})),
                "{path}: {e}"
            );
        }
        assert_eq!(std::fs::read_dir(&outside).expect("read").count(), 0);
        assert_eq!(mode_of(&outside), before);
    }

    #[test]
    fn a_symlink_planted_after_the_check_is_refused_too() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("vols");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).expect("base");
        std::fs::create_dir(&outside).expect("outside");
        let c = check_entry(0, &vol("a/b", Some("0700")), &root, None, euid()).expect("valid");
        check_existing(&root, &c).expect("nothing there yet");
        std::os::unix::fs::symlink(&outside, root.join("a")).expect("plant");
        let e = apply(&root, &c).expect_err("planted link");
        assert_eq!(e.data, Some(json!({"param": "volumes[0].path"})), "{e}");
        assert_eq!(std::fs::read_dir(&outside).expect("read").count(), 0);
    }

    #[test]
    fn sets_the_owner() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("vols");
        let me = euid();
        let (uid, gid) = if me == 0 {
            (4242, 4343)
        } else {
            (me, rustix::process::getegid().as_raw())
        };
        let want = VolumeDir {
            uid: Some(uid),
            gid: Some(gid),
            ..vol("owned", Some("0700"))
        };
        let got = prepare(&base, &[want], me).expect("prepare");
        let v = &got.volumes[0];
        assert_eq!((v.uid, v.gid, v.mode.as_str()), (uid, gid, "0700"));
        let meta = std::fs::metadata(base.join("owned")).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    }

    #[test]
    fn only_root_gives_directories_away() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let want = VolumeDir {
            uid: Some(4242),
            ..vol("x", None)
        };
        let e = prepare(tmp.path(), &[want], 1000).expect_err("not root");
        assert_eq!(e.data, Some(json!({"param": "volumes[0].uid"})));
        let own = VolumeDir {
            uid: Some(1000),
            ..vol("x", None)
        };
        assert!(check_entry(0, &own, tmp.path(), None, 1000).is_ok());
        assert!(!tmp.path().join("x").exists());
    }

    #[test]
    fn parses_modes() {
        let cases = [
            (None, Ok(0o755)),
            (Some("0755"), Ok(0o755)),
            (Some("750"), Ok(0o750)),
            (Some("0000"), Ok(0)),
            (Some("0777"), Ok(0o777)),
        ];
        for (s, want) in cases {
            assert_eq!(parse_mode(s), want, "{s:?}");
        }
        for bad in ["7777", "4755", "0758", "", "07", "+755", " 755"] {
            assert!(parse_mode(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
