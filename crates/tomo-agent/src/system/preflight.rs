//! `system.preflight_check`: can this host take a deployment? Each check is a plain function of
//! what it looks at (a path, a port, a version), so tests drive them without an agent.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;

use serde_json::json;
use tomo_proto::methods::{DockerStatus, PreflightCheck, PreflightParams};
use tomo_proto::rpc::RpcError;

/// Free bytes `disk` asks for when the caller names none: 1 GiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 1 << 30;
/// Most ports one preflight checks.
pub const MAX_PORTS: usize = 1024;

/// What the checks look at on this host.
#[derive(Debug, Clone, Copy)]
pub struct HostView<'a> {
    /// Rust's name of the agent's architecture (`x86_64`, `aarch64`, …).
    pub arch: &'a str,
    pub volume_base: &'a Path,
    pub data_dir: &'a Path,
}

/// Refuses params no check can answer: port 0, too many ports, a malformed minimum version.
pub fn validate(p: &PreflightParams) -> Result<(), RpcError> {
    if p.ports.len() > MAX_PORTS {
        return Err(invalid("ports", format!("at most {MAX_PORTS} ports")));
    }
    if let Some(i) = p.ports.iter().position(|&port| port == 0) {
        return Err(invalid(&format!("ports[{i}]"), "port 0 is not a port"));
    }
    if let Some(min) = &p.min_docker_version
        && parse_min_version(min).is_none()
    {
        return Err(invalid(
            "min_docker_version",
            format!("{min:?} is not a dotted version such as 20.10"),
        ));
    }
    Ok(())
}

/// Runs every check asked for, in a fixed order: `docker`, `docker_version`, `disk`,
/// `architecture`, `port:<n>`…, `data_dir`. Blocking (file system and socket calls).
pub fn run(docker: &DockerStatus, host: HostView<'_>, p: &PreflightParams) -> Vec<PreflightCheck> {
    let mut checks = vec![docker_check(docker)];
    if let Some(min) = &p.min_docker_version {
        checks.push(docker_version_check(docker, min));
    }
    checks.push(disk_check(
        host.volume_base,
        p.min_free_disk.unwrap_or(DEFAULT_MIN_FREE_DISK),
    ));
    checks.push(arch_check(host.arch, &p.architectures));
    checks.extend(p.ports.iter().map(|&port| port_check(port)));
    checks.push(data_dir_check(host.data_dir));
    checks
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> PreflightCheck {
    PreflightCheck {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

fn invalid(param: &str, why: impl std::fmt::Display) -> RpcError {
    RpcError::invalid_params(format!("{param}: {why}")).with_data(json!({ "param": param }))
}

/// `docker`: the engine answers.
pub fn docker_check(s: &DockerStatus) -> PreflightCheck {
    if s.available {
        let version = s.version.as_deref().unwrap_or("unknown version");
        let api = s.api_version.as_deref().unwrap_or("?");
        check("docker", true, format!("Docker {version} (API {api})"))
    } else {
        let why = s.error.as_deref().unwrap_or("no answer");
        check("docker", false, format!("Docker is unavailable: {why}"))
    }
}

/// `docker_version`: the engine is at least `min` (already checked by [`validate`]).
pub fn docker_version_check(s: &DockerStatus, min: &str) -> PreflightCheck {
    let name = "docker_version";
    let Some(version) = s.version.as_deref().filter(|_| s.available) else {
        return check(name, false, format!("Docker is unavailable; {min} needed"));
    };
    match (engine_version(version), parse_min_version(min)) {
        (Some(have), Some(want)) if !version_less(&have, &want) => {
            check(name, true, format!("Docker {version} ≥ {min}"))
        }
        (Some(_), Some(_)) => check(name, false, format!("Docker {version} is older than {min}")),
        _ => check(
            name,
            false,
            format!("cannot read Docker's version {version:?}"),
        ),
    }
}

/// `20.10`, `27.3.1`: dot-separated numbers, nothing else.
fn parse_min_version(s: &str) -> Option<Vec<u64>> {
    s.split('.')
        .map(|p| {
            (!p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect()
}

/// The numeric part of an engine's version: `20.10.24+dfsg1` → 20.10.24, `28.0.0-rc.1` → 28.0.0.
fn engine_version(s: &str) -> Option<Vec<u64>> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    parse_min_version(s[..end].trim_end_matches('.'))
}

/// `a < b`, missing parts counting as 0 (`20.10` = `20.10.0`).
fn version_less(a: &[u64], b: &[u64]) -> bool {
    let n = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..n)
        .map(|i| (at(a, i), at(b, i)))
        .find(|(x, y)| x != y)
        .is_some_and(|(x, y)| x < y)
}

/// `disk`: free bytes (for unprivileged users) on the filesystem that holds `base`, or its
/// nearest existing ancestor when it does not exist yet.
pub fn disk_check(base: &Path, min_free: u64) -> PreflightCheck {
    let Some(existing) = base.ancestors().find(|p| p.exists()) else {
        return check(
            "disk",
            false,
            format!("no part of {} exists", base.display()),
        );
    };
    let at = if existing == base {
        base.display().to_string()
    } else {
        format!("{} (for {})", existing.display(), base.display())
    };
    match rustix::fs::statvfs(existing) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let ok = free >= min_free;
            let verdict = if ok { "needed" } else { "needed: too little" };
            check(
                "disk",
                ok,
                format!(
                    "{} free on {at}; {} {verdict}",
                    human(free),
                    human(min_free)
                ),
            )
        }
        Err(e) => check(
            "disk",
            false,
            format!("cannot read free space of {at}: {e}"),
        ),
    }
}

/// Bytes in binary units, one decimal.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `architecture`: the host's, in Docker's words, is among `wanted` (any when empty).
pub fn arch_check(host_arch: &str, wanted: &[String]) -> PreflightCheck {
    let host = host_docker_arch(host_arch);
    if wanted.is_empty() {
        return check("architecture", true, format!("{host} (any accepted)"));
    }
    let ok = wanted.iter().any(|w| docker_arch(w) == host);
    let detail = if ok {
        format!("{host} is supported")
    } else {
        format!("{host} is not among {}", wanted.join(", "))
    };
    check("architecture", ok, detail)
}

/// The Docker name of the architecture Rust calls `arch` (for this agent's own build).
fn host_docker_arch(arch: &str) -> String {
    if arch == "powerpc64" && cfg!(target_endian = "little") {
        return "ppc64le".into();
    }
    docker_arch(arch)
}

/// An architecture in Docker's (GOARCH) words: `x86_64` → `amd64`, `aarch64` → `arm64`,
/// `linux/arm/v7` → `arm`; unknown names are only lower-cased.
pub fn docker_arch(arch: &str) -> String {
    let a = arch.trim().to_ascii_lowercase();
    let a = a.strip_prefix("linux/").unwrap_or(&a);
    let base = a.split('/').next().unwrap_or(a);
    match base {
        "x86_64" | "x86-64" | "x64" | "amd64" => "amd64",
        "aarch64" | "arm64" | "armv8" | "armv8l" => "arm64",
        "arm" | "armv7" | "armv7l" | "armv6" | "armv6l" | "armhf" | "armel" => "arm",
        "x86" | "i386" | "i486" | "i586" | "i686" | "386" => "386",
        "powerpc64le" | "ppc64le" | "ppc64el" => "ppc64le",
        "powerpc64" | "ppc64" => "ppc64",
        "riscv64" | "riscv64gc" => "riscv64",
        "mips64el" | "mips64le" => "mips64le",
        "loongarch64" | "loong64" => "loong64",
        other => other,
    }
    .to_owned()
}

/// `port:<n>`: nothing listens on TCP port `n`. The agent binds `0.0.0.0:n`, then `[::]:n`,
/// and lets go at once (a local bind; nothing is sent). A listener on any address of the port
/// makes the wildcard bind fail. When the agent may not bind the port at all (below 1024 and
/// not root) it reads `/proc/net/tcp` and `/proc/net/tcp6` instead.
pub fn port_check(port: u16) -> PreflightCheck {
    let name = format!("port:{port}");
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match bind_probe(v4) {
        Ok(()) => match bind_probe(v6) {
            Ok(()) => check(name, true, "free (0.0.0.0 and [::])"),
            Err(e) if no_ipv6(&e) => check(name, true, "free (0.0.0.0; no IPv6)"),
            Err(e) => check(name, false, in_use(v6, &e)),
        },
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            if listening_in_proc(port) {
                check(name, false, "in use (a listener shows in /proc/net/tcp)")
            } else {
                check(
                    name,
                    true,
                    "free as /proc/net/tcp shows it (the agent may not bind it itself; Docker can)",
                )
            }
        }
        Err(e) => check(name, false, in_use(v4, &e)),
    }
}

fn bind_probe(addr: SocketAddr) -> io::Result<()> {
    TcpListener::bind(addr).map(drop)
}

fn no_ipv6(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable
        || e.raw_os_error() == Some(rustix::io::Errno::AFNOSUPPORT.raw_os_error())
}

fn in_use(addr: SocketAddr, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::AddrInUse {
        format!("in use: cannot bind {addr} (address already in use)")
    } else {
        format!("cannot bind {addr}: {e}")
    }
}

/// Whether `/proc/net/tcp` or `/proc/net/tcp6` lists a socket listening on `port`.
fn listening_in_proc(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|text| proc_net_listens(&text, port))
            .unwrap_or(false)
    })
}

/// Parses `/proc/net/tcp{,6}`: `sl local_address rem_address st …`, addresses `HEX:PORT`,
/// state `0A` for LISTEN.
fn proc_net_listens(text: &str, port: u16) -> bool {
    text.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let local = fields.next().and_then(|a| a.rsplit_once(':'));
        let state = fields.nth(1);
        matches!((local, state), (Some((_, p)), Some("0A")) if u16::from_str_radix(p, 16) == Ok(port))
    })
}

/// `data_dir`: the agent can create (and remove) a file in its data directory.
pub fn data_dir_check(dir: &Path) -> PreflightCheck {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(format!(
        ".tomo-preflight-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe);
    match created.and_then(|f| {
        drop(f);
        std::fs::remove_file(&probe)
    }) {
        Ok(()) => check("data_dir", true, format!("{} is writable", dir.display())),
        Err(e) => check(
            "data_dir",
            false,
            format!("{} is not writable: {e}", dir.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: serde_json::Value) -> PreflightParams {
        serde_json::from_value(json).expect("params")
    }

    fn up(version: &str) -> DockerStatus {
        DockerStatus {
            available: true,
            version: Some(version.into()),
            api_version: Some("1.47".into()),
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_the_parameter() {
        // (params, offending parameter or None when valid)
        let cases = [
            (json!({}), None),
            (json!({"ports": [80, 443]}), None),
            (json!({"ports": [80, 0]}), Some("ports[1]")),
            (json!({"min_docker_version": "20.10"}), None),
            (
                json!({"min_docker_version": "20.x"}),
                Some("min_docker_version"),
            ),
            (
                json!({"min_docker_version": ""}),
                Some("min_docker_version"),
            ),
            (
                json!({"min_docker_version": "v20"}),
                Some("min_docker_version"),
            ),
            (json!({"ports": vec![80; MAX_PORTS + 1]}), Some("ports")),
        ];
        for (p, want) in cases {
            let got = validate(&params(p.clone())).err();
            assert_eq!(
                got.as_ref().and_then(|e| e.data.clone()),
                want.map(|w| json!({ "param": w })),
                "{p}"
            );
            if let Some(e) = got {
                assert_eq!(e.code, tomo_proto::rpc::code::INVALID_PARAMS);
            }
        }
    }

    #[test]
    fn compares_docker_versions() {
        // (engine version, minimum, ok)
        let cases = [
            ("27.3.1", "20.10", true),
            ("20.10.24+dfsg1", "20.10", true),
            ("20.10.24+dfsg1", "20.10.25", false),
            ("20.10", "20.10.0", true),
            ("19.03.15", "20.10", false),
            ("28.0.0-rc.1", "28", true),
            ("9.0", "10.0", false),
            ("banana", "1", false),
        ];
        for (have, min, ok) in cases {
            let c = docker_version_check(&up(have), min);
            assert_eq!(c.ok, ok, "{have} vs {min}: {c:?}");
            assert_eq!(c.name, "docker_version");
        }
        let down = DockerStatus {
            error: Some("connection refused".into()),
            ..Default::default()
        };
        assert!(!docker_version_check(&down, "1").ok);
        let c = docker_check(&down);
        assert!(!c.ok && c.detail.contains("connection refused"), "{c:?}");
        assert!(docker_check(&up("27.3.1")).detail.contains("27.3.1"));
    }

    #[test]
    fn normalises_architectures() {
        let cases = [
            ("x86_64", "amd64"),
            ("aarch64", "arm64"),
            ("arm", "arm"),
            ("armv7l", "arm"),
            ("linux/arm/v7", "arm"),
            ("arm64/v8", "arm64"),
            ("x86", "386"),
            ("i686", "386"),
            ("AMD64", "amd64"),
            ("riscv64", "riscv64"),
            ("s390x", "s390x"),
            ("loongarch64", "loong64"),
        ];
        for (rust, docker) in cases {
            assert_eq!(docker_arch(rust), docker, "{rust}");
        }
        let want = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(arch_check("x86_64", &[]).ok);
        assert!(arch_check("x86_64", &want(&["arm64", "amd64"])).ok);
        assert!(arch_check("x86_64", &want(&["linux/amd64"])).ok);
        let c = arch_check("aarch64", &want(&["amd64"]));
        assert!(!c.ok && c.detail.contains("arm64"), "{c:?}");
    }

    #[test]
    fn a_port_someone_listens_on_is_in_use() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let c = port_check(port);
        assert_eq!(c.name, format!("port:{port}"));
        assert!(!c.ok, "{c:?}");
        assert!(c.detail.contains("in use"), "{c:?}");
        assert!(listening_in_proc(port));
        drop(listener);
        let c = port_check(port);
        assert!(c.ok, "after the listener closed: {c:?}");
    }

    #[test]
    fn a_free_port_is_free() {
        let port = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let c = port_check(port);
        assert!(c.ok, "{c:?}");
        assert!(c.detail.starts_with("free"), "{c:?}");
    }

    #[test]
    fn reads_listeners_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
           1: 0100007F:0050 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000\n";
        assert!(proc_net_listens(text, 8080));
        assert!(!proc_net_listens(text, 80), "established, not listening");
        assert!(!proc_net_listens(text, 443));
        assert!(!proc_net_listens("", 8080));
    }

    #[test]
    fn disk_uses_the_nearest_existing_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("not/yet");
        let c = disk_check(&base, 1);
        assert!(c.ok, "{c:?}");
        assert!(
            c.detail.contains(&tmp.path().display().to_string()),
            "{c:?}"
        );
        let c = disk_check(tmp.path(), u64::MAX);
        assert!(!c.ok && c.detail.contains("too little"), "{c:?}");
    }

    #[test]
    fn data_dir_must_be_writable_and_is_left_clean() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = data_dir_check(tmp.path());
        assert!(c.ok, "{c:?}");
        assert_eq!(std::fs::read_dir(tmp.path()).expect("read").count(), 0);
        let c = data_dir_check(&tmp.path().join("missing"));
        assert!(!c.ok && c.detail.contains("not writable"), "{c:?}");
    }

    #[test]
    fn runs_the_checks_in_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = HostView {
            arch: "x86_64",
            volume_base: tmp.path(),
            data_dir: tmp.path(),
        };
        let p = params(json!({"ports": [1, 2], "min_docker_version": "20.10", "min_free_disk": 1}));
        let names: Vec<_> = run(&up("27.0.1"), host, &p)
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            [
                "docker",
                "docker_version",
                "disk",
                "architecture",
                "port:1",
                "port:2",
                "data_dir"
            ]
        );
        let names: Vec<_> = run(&up("27.0.1"), host, &PreflightParams::default())
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["docker", "disk", "architecture", "data_dir"]);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1 << 30), "1.0 GiB");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
