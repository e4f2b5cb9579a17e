//! The host policy: the host owner's last word over what this agent does, read from a TOML file
//! on the host (`/etc/tomo/policy.toml` by default) that the control plane can neither read nor
//! change.
//!
//! It caps the level of every request ([`HostPolicy::effective_level`],
//! [`HostPolicy::check_method`]), and it is what the validation stage ([`crate::validate`])
//! checks container options against: allowed images, bind-mount roots, capabilities, devices,
//! sysctls, security options and volume drivers. It also adds `system.exec` allowlist entries.
//!
//! Every field is optional; the defaults ([`HostPolicy::default_for`]) let a new install work out
//! of the box while refusing everything that hands the host to a container. The file is refused
//! when it or its directory is writable by anyone but its owner, or when it is owned by another
//! user than root or the agent's; an unknown key is an error (a typo must not silently widen the
//! policy), and every error names the line.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::json;
use toml::Spanned;
use tomo_proto::methods::Level;
use tomo_proto::rpc::{RpcError, code};

use crate::system::command::{AllowEntry, Allowlist};
use crate::validate::{image, paths};

/// Where the policy is read from when the configuration names no file.
pub const DEFAULT_PATH: &str = "/etc/tomo/policy.toml";

/// Largest policy file read, bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Docker's default capability set (moby `oci/caps/defaults.go`): adding one of these back after
/// a `cap_drop` gives a container nothing a default container does not have.
pub const DOCKER_DEFAULT_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Default bind-mount source roots; the agent's volume base is always added. Not `/tmp`: any
/// local user can plant a symlink there (a policy can still name it, see
/// [`HostPolicy::explicit_bind_roots`]).
pub const DEFAULT_BIND_ROOTS: &[&str] = &["/srv", "/opt", "/mnt", "/media", "/data"];

/// Default sysctl patterns: the network namespace's own (only with a network namespace of the
/// container's own).
pub const DEFAULT_SYSCTLS: &[&str] = &["net.*"];

/// Default volume drivers.
pub const DEFAULT_VOLUME_DRIVERS: &[&str] = &["local"];

/// Default filesystem types of `local` volumes that mount something (`type=…`): memory and
/// network filesystems; never a host block device.
pub const DEFAULT_VOLUME_TYPES: &[&str] = &["tmpfs", "nfs", "nfs4", "cifs"];

/// Default of [`HostPolicy::rate_per_minute`].
pub const DEFAULT_RATE_PER_MINUTE: u32 = 30;
/// Default of [`HostPolicy::max_concurrent`].
pub const DEFAULT_MAX_CONCURRENT: u32 = 5;
/// Default of [`HostPolicy::docker_read_bytes`]: 4 MiB.
pub const DEFAULT_DOCKER_READ_BYTES: u32 = crate::docker::transport::DEFAULT_BODY_CAP as u32;
/// Default of [`HostPolicy::reads_per_minute`]: generous, a dashboard polling every second fits.
pub const DEFAULT_READS_PER_MINUTE: u32 = 600;

/// `stream.ack` and `stream.close` only manage streams that an allowed method opened; an
/// `allow_methods` list that forgot them would hang those streams, so it does not apply to them
/// (`deny_methods` still does).
const STREAM_HOUSEKEEPING: &[&str] = &["stream.ack", "stream.close"];

/// The host policy, validated. See the module doc and docs/security.md for each field.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPolicy {
    /// The file it was read from; `None` for the built-in defaults.
    pub source: Option<PathBuf>,
    /// No request runs above this level, whatever the caller's role (default `admin`).
    pub max_level: Level,
    /// Only `read` methods run (default `false`).
    pub read_only: bool,
    /// Methods refused: exact names or `prefix.*` (default none).
    pub deny_methods: Vec<String>,
    /// When set, only these methods run (default: all).
    pub allow_methods: Option<Vec<String>>,
    /// Image reference patterns allowed for run, pull and update, normalised
    /// (`docker.io/library/*`); `None`: any image (default).
    pub images: Option<Vec<String>>,
    /// `system.exec` entries added to the built-in allowlist.
    pub exec_allow: Vec<AllowEntry>,
    /// Bind-mount sources must be under one of these (normalised, absolute).
    pub bind_roots: Vec<String>,
    /// The bind roots the policy file names itself (not the defaults, not the volume base). A
    /// bind source under one of them may cross a directory writable by others (`/tmp`); any
    /// other source that does is refused.
    pub explicit_bind_roots: Vec<String>,
    /// Capabilities `cap_add` may name, canonical (`NET_ADMIN`, no `CAP_`).
    pub cap_add_allowed: BTreeSet<String>,
    /// Host device paths (globs) a container may be given; default none.
    pub devices: Vec<String>,
    /// Device cgroup rules allowed, normalised (`c 188:* rwm`); default none.
    pub device_cgroup_rules: Vec<String>,
    /// Security options allowed besides `no-new-privileges`, normalised (`apparmor=my-profile`).
    pub security_opt: Vec<String>,
    /// Sysctl name patterns allowed (default `net.*`).
    pub sysctls: Vec<String>,
    /// Volume drivers allowed (default `local`).
    pub volume_drivers: Vec<String>,
    /// Filesystem types a `local` volume may mount (default tmpfs, nfs, nfs4, cifs).
    pub volume_types: Vec<String>,
    /// Requests per minute (default 30).
    pub rate_per_minute: u32,
    /// Requests running at once (default 5).
    pub max_concurrent: u32,
    /// Read requests per minute for each principal (token), stream continuations not counted
    /// (default 600).
    pub reads_per_minute: u32,
    /// Largest answer read from Docker for one call, and most read between two items of a
    /// stream, bytes (default 4 MiB; see [`crate::docker::transport`]).
    pub docker_read_bytes: u32,
    /// Host paths never bind-mounted, nor anything inside them nor any ancestor of them,
    /// besides the built-in protected ones: the file's `protected` list (a control plane's data
    /// directory on this host, a Docker `data-root` moved out of `/var`), the agent's own data
    /// directory and what the agent's configuration adds ([`HostPolicy::protect`]).
    pub protected_extra: Vec<String>,
}

/// A policy file that cannot be used: the agent refuses to start (exit status 64).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy file {0} does not exist")]
    Missing(PathBuf),
    #[error("policy file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "policy file {path} is writable by group or others (mode {mode:04o}): make it 0644 or stricter"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error(
        "policy file {path} is owned by uid {uid}: it must belong to root or to the agent's user"
    )]
    Owner { path: PathBuf, uid: u32 },
    #[error(
        "policy file {path}: its directory {dir} is writable by group or others without the sticky bit"
    )]
    DirectoryWritable { path: PathBuf, dir: PathBuf },
    #[error("policy file {path} is not a regular file or is larger than 1 MiB")]
    NotAFile { path: PathBuf },
    #[error("policy file {path}, line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    max_level: Option<Level>,
    read_only: Option<bool>,
    deny_methods: Option<Vec<Spanned<String>>>,
    allow_methods: Option<Vec<Spanned<String>>>,
    images: Option<Vec<Spanned<String>>>,
    exec_allow: Option<Vec<Spanned<String>>>,
    bind_roots: Option<Vec<Spanned<String>>>,
    cap_add_allowed: Option<Vec<Spanned<String>>>,
    devices: Option<Vec<Spanned<String>>>,
    device_cgroup_rules: Option<Vec<Spanned<String>>>,
    security_opt: Option<Vec<Spanned<String>>>,
    sysctls: Option<Vec<Spanned<String>>>,
    volume_drivers: Option<Vec<Spanned<String>>>,
    volume_types: Option<Vec<Spanned<String>>>,
    rate_per_minute: Option<Spanned<u32>>,
    max_concurrent: Option<Spanned<u32>>,
    reads_per_minute: Option<Spanned<u32>>,
    docker_read_bytes: Option<Spanned<u32>>,
    protected: Option<Vec<Spanned<String>>>,
}

impl HostPolicy {
    /// The built-in defaults, with `volume_base` among the bind roots.
    pub fn default_for(volume_base: &Path) -> Self {
        let mut policy = Self {
            source: None,
            max_level: Level::Admin,
            read_only: false,
            deny_methods: Vec::new(),
            allow_methods: None,
            images: None,
            exec_allow: Vec::new(),
            bind_roots: DEFAULT_BIND_ROOTS.iter().map(|r| (*r).to_owned()).collect(),
            explicit_bind_roots: Vec::new(),
            cap_add_allowed: DOCKER_DEFAULT_CAPS
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            devices: Vec::new(),
            device_cgroup_rules: Vec::new(),
            security_opt: Vec::new(),
            sysctls: DEFAULT_SYSCTLS.iter().map(|s| (*s).to_owned()).collect(),
            volume_drivers: DEFAULT_VOLUME_DRIVERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            volume_types: DEFAULT_VOLUME_TYPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            rate_per_minute: DEFAULT_RATE_PER_MINUTE,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            reads_per_minute: DEFAULT_READS_PER_MINUTE,
            docker_read_bytes: DEFAULT_DOCKER_READ_BYTES,
            protected_extra: Vec::new(),
        };
        policy.add_volume_base(volume_base);
        policy
    }

    /// Reads the policy. `path` `None` means [`DEFAULT_PATH`], where a missing file means the
    /// defaults; a file named explicitly must exist.
    pub fn load(path: Option<&Path>, volume_base: &Path) -> Result<Self, PolicyError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Self::default_for(volume_base));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PolicyError::Missing(path));
            }
            Err(source) => return Err(PolicyError::Io { path, source }),
        };
        check_file_safety(&path, &meta)?;
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_toml(&text, &path, volume_base)
    }

    /// Parses and validates policy text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path, volume_base: &Path) -> Result<Self, PolicyError> {
        let invalid =
            |span: Option<std::ops::Range<usize>>, message: String| PolicyError::Invalid {
                path: path.to_path_buf(),
                line: line_of(text, span.map_or(0, |s| s.start)),
                message,
            };
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().to_owned()))?;
        let mut p = Self::default_for(volume_base);
        p.source = Some(path.to_path_buf());
        let fail = |s: &Spanned<String>, why: String| invalid(Some(s.span()), why);
        if let Some(l) = file.max_level {
            p.max_level = l;
        }
        if let Some(r) = file.read_only {
            p.read_only = r;
        }
        if let Some(list) = &file.deny_methods {
            p.deny_methods =
                each(list, "deny_methods", method_pattern).map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.allow_methods {
            let allowed =
                each(list, "allow_methods", method_pattern).map_err(|(s, w)| fail(s, w))?;
            p.allow_methods = Some(allowed);
        }
        if let Some(list) = &file.images {
            p.images =
                Some(each(list, "images", image::normalize_pattern).map_err(|(s, w)| fail(s, w))?);
        }
        if let Some(list) = &file.exec_allow {
            p.exec_allow = each(list, "exec_allow", |s| {
                AllowEntry::parse(s).map_err(|e| e.to_string())
            })
            .map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.bind_roots {
            p.bind_roots = each(list, "bind_roots", bind_root).map_err(|(s, w)| fail(s, w))?;
            p.explicit_bind_roots = p.bind_roots.clone();
            p.add_volume_base(volume_base);
        }
        if let Some(list) = &file.cap_add_allowed {
            p.cap_add_allowed = each(list, "cap_add_allowed", |s| {
                crate::validate::capability(s).ok_or_else(|| "not a capability name".to_owned())
            })
            .map_err(|(s, w)| fail(s, w))?
            .into_iter()
            .collect();
        }
        if let Some(list) = &file.devices {
            p.devices = each(list, "devices", device_pattern).map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.device_cgroup_rules {
            p.device_cgroup_rules = each(list, "device_cgroup_rules", |s| {
                Ok(crate::validate::device_cgroup_rule(s))
            })
            .map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.security_opt {
            p.security_opt = each(list, "security_opt", |s| {
                Ok(crate::validate::security_opt(s).to_string())
            })
            .map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.sysctls {
            p.sysctls = each(list, "sysctls", sysctl_pattern).map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.volume_drivers {
            p.volume_drivers = each(list, "volume_drivers", word).map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.volume_types {
            p.volume_types = each(list, "volume_types", word).map_err(|(s, w)| fail(s, w))?;
        }
        if let Some(list) = &file.protected {
            for path in each(list, "protected", protected_path).map_err(|(s, w)| fail(s, w))? {
                p = p.protect(Path::new(&path));
            }
        }
        if let Some(n) = &file.rate_per_minute {
            p.rate_per_minute = in_range(n, 1..=100_000, "rate_per_minute")
                .map_err(|w| invalid(Some(n.span()), w))?;
        }
        if let Some(n) = &file.max_concurrent {
            p.max_concurrent =
                in_range(n, 1..=1_000, "max_concurrent").map_err(|w| invalid(Some(n.span()), w))?;
        }
        if let Some(n) = &file.reads_per_minute {
            p.reads_per_minute = in_range(n, 1..=1_000_000, "reads_per_minute")
                .map_err(|w| invalid(Some(n.span()), w))?;
        }
        if let Some(n) = &file.docker_read_bytes {
            p.docker_read_bytes = in_range(n, 64 * 1024..=256 * 1024 * 1024, "docker_read_bytes")
                .map_err(|w| invalid(Some(n.span()), w))?;
        }
        Ok(p)
    }

    /// Adds a host path that is never bind-mounted, nor anything inside it nor any ancestor of
    /// it (the agent's data directory, which holds its private key: `/data` by default, itself a
    /// default bind root; the control plane's data directory under `tomo dev`).
    pub fn protect(mut self, path: &Path) -> Self {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(p) = absolute.to_str().and_then(paths::normalize)
            && !self.protected_extra.contains(&p)
        {
            self.protected_extra.push(p);
        }
        self
    }

    /// The level a request runs with: the lower of the caller's role and `max_level`.
    pub fn effective_level(&self, role: Level) -> Level {
        role.min(self.max_level)
    }

    /// Whether `method`, which needs `level`, may run for a caller with `role`. Refusals are
    /// -32001: `data.reason` `policy` with `data.rule` (`max_level`, `read_only`,
    /// `deny_methods`, `allow_methods`), or `forbidden` when the role alone is too low.
    pub fn check_method(&self, method: &str, level: Level, role: Level) -> Result<(), RpcError> {
        let deny = |rule: &str, message: String| {
            RpcError::new(code::SECURITY, message)
                .with_data(json!({"reason": "policy", "rule": rule}))
        };
        if level > self.max_level {
            return Err(deny(
                "max_level",
                format!(
                    "{method} needs the {} level, above this host's policy max_level {}",
                    level_name(level),
                    level_name(self.max_level)
                ),
            ));
        }
        if self.read_only && level > Level::Read {
            return Err(deny(
                "read_only",
                format!(
                    "{method} needs the {} level and this host's policy is read_only",
                    level_name(level)
                ),
            ));
        }
        if let Some(p) = self.deny_methods.iter().find(|p| method_matches(p, method)) {
            return Err(deny(
                "deny_methods",
                format!("{method} is denied by this host's policy (deny_methods: {p})"),
            ));
        }
        if let Some(allow) = &self.allow_methods
            && !STREAM_HOUSEKEEPING.contains(&method)
            && !allow.iter().any(|p| method_matches(p, method))
        {
            return Err(deny(
                "allow_methods",
                format!("{method} is not in this host's policy allow_methods"),
            ));
        }
        if level > role {
            return Err(RpcError::new(
                code::SECURITY,
                format!(
                    "{method} needs the {} role, the caller has {}",
                    level_name(level),
                    level_name(role)
                ),
            )
            .with_data(json!({"reason": "forbidden"})));
        }
        Ok(())
    }

    /// The `system.exec` allowlist: the built-in entries and the policy's `exec_allow`.
    pub fn exec_allowlist(&self) -> Allowlist {
        let mut list = Allowlist::builtin();
        for e in &self.exec_allow {
            list.push(e.clone());
        }
        list
    }

    fn add_volume_base(&mut self, volume_base: &Path) {
        let Some(base) = volume_base.to_str().and_then(paths::normalize) else {
            return;
        };
        if let Some(p) = paths::protected(&base, &[]) {
            tracing::warn!(volume_base = %base, protected = p, "the volume base is inside a protected path: it is not a bind root");
        } else if !self.bind_roots.contains(&base) {
            self.bind_roots.push(base);
        }
    }
}

/// `read`, `execute` or `admin`.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Read => "read",
        Level::Execute => "execute",
        Level::Admin => "admin",
    }
}

/// Whether a method pattern (`*`, an exact name, or `prefix.*`) matches `method`.
pub fn method_matches(pattern: &str, method: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => method.starts_with(prefix),
        None => pattern == method,
    }
}

/// Glob match: `*` is any run of characters (`/` included), `?` one character; everything else
/// is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Refuses a policy file others could have written.
fn check_file_safety(path: &Path, meta: &std::fs::Metadata) -> Result<(), PolicyError> {
    if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
        return Err(PolicyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PolicyError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(PolicyError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    // The directory of the name given and of the file it leads to: whoever can write to either
    // can swap the file (or the symlink to it).
    let real = std::fs::canonicalize(path).ok();
    let dirs = [Some(path), real.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|p| {
            p.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            })
        });
    for dir in dirs {
        if let Ok(d) = std::fs::metadata(dir)
            && d.mode() & 0o022 != 0
            && d.mode() & 0o1000 == 0
        {
            return Err(PolicyError::DirectoryWritable {
                path: path.to_path_buf(),
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Applies `f` to each entry, pairing a failure with the entry (for its line).
fn each<'a, T>(
    list: &'a [Spanned<String>],
    key: &str,
    f: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, (&'a Spanned<String>, String)> {
    list.iter()
        .map(|s| f(s.get_ref()).map_err(|why| (s, format!("{key}: {:?}: {why}", s.get_ref()))))
        .collect()
}

fn in_range(
    n: &Spanned<u32>,
    range: std::ops::RangeInclusive<u32>,
    key: &str,
) -> Result<u32, String> {
    let v = *n.get_ref();
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{key}: {v} is not between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

/// `*`, an exact method name, or `prefix.*`; it must match at least one method (a typo in a
/// deny list must not silently deny nothing).
fn method_pattern(s: &str) -> Result<String, String> {
    let s = s.trim();
    let stars = s.matches('*').count();
    let shape_ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._*".contains(&b))
        && (stars == 0 || (stars == 1 && (s == "*" || s.ends_with(".*"))));
    if !shape_ok {
        return Err("must be a method name, `prefix.*` or `*`".into());
    }
    if !tomo_proto::methods::ALL
        .iter()
        .any(|m| method_matches(s, m.name))
    {
        return Err("matches no method of the agent".into());
    }
    Ok(s.to_owned())
}

/// An absolute path, normalised, not inside a protected path.
fn bind_root(s: &str) -> Result<String, String> {
    let root = paths::normalize(s).ok_or("must be an absolute path")?;
    match paths::protected(&root, &[]) {
        Some(p) if root != "/" => Err(format!(
            "is inside the protected {p}: protected paths are never bind-mounted"
        )),
        _ => Ok(root),
    }
}

/// An absolute path (normalised).
fn protected_path(s: &str) -> Result<String, String> {
    Ok(paths::normalize(s.trim()).ok_or("must be an absolute path")?)
}

fn device_pattern(s: &str) -> Result<String, String> {
    let p = paths::normalize(s.trim()).ok_or("must be an absolute path")?;
    Ok(p)
}

fn sysctl_pattern(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b))
    {
        return Err("must be a sysctl name or pattern (letters, digits, . _ - *)".into());
    }
    Ok(s.replace('/', "."))
}

fn word(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be one word".into());
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
