//! The validation stage on arbitrary `docker.containers.run` params, and host path
//! normalisation.
//!
//! Input that is a `RunParams` JSON document is used as it is (the corpus's seeds); any other
//! input is read as a structured description whose strings come mostly from a vocabulary of
//! spellings that matter (`..`, `//`, `/./`, trailing `/`, case, `CAP_` prefixes, `host` modes,
//! `o=bind` volume options, symlinks of a small host tree).
//!
//! Never panics. Whatever the validators accept is checked again here against the rules stated
//! independently: not privileged, only default capabilities, no `host` namespace, no device, only
//! `no-new-privileges`, only `net.*` sysctls, no unknown mount type, every bind source (short
//! form, `mounts`, and the `device` of a binding volume) absolute, under a bind root and outside
//! the protected paths both as written and once resolved, and no reference to a privileged or
//! host-namespaced container or a host-bound volume. A normalised path never holds an empty,
//! `.` or `..` component nor a trailing `/`.

#![no_main]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use arbitrary::{Arbitrary, Unstructured};
use bollard::models::{ContainerInspectResponse, HostConfig, Volume};
use libfuzzer_sys::fuzz_target;
use tomo_agent::policy::{DEFAULT_BIND_ROOTS, DOCKER_DEFAULT_CAPS, HostPolicy};
use tomo_agent::validate::{self, Lookup, image, paths};
use tomo_proto::methods::{MountSpec, RunParams, VolumeBinding};
use tomo_proto::refs::{ContainerRef, NetworkRef, VolumeRef};
use tomo_proto::rpc::{RpcError, code};

/// The agent's volume base and data directory in the fuzzed policy.
const VOLUME_BASE: &str = "/srv/tomo";
const DATA_DIR: &str = "/srv/tomo-data";

struct Fixture {
    root: PathBuf,
    policy: HostPolicy,
    images: HostPolicy,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let policy = HostPolicy::default_for(Path::new(VOLUME_BASE)).protect(Path::new(DATA_DIR));
    let mut images = policy.clone();
    images.images = Some(vec![
        image::normalize_pattern("ghcr.io/acme/*").expect("a pattern"),
    ]);
    Fixture {
        root: host_root(),
        policy,
        images,
    }
});

fuzz_target!(|data: &[u8]| {
    let p = match std::str::from_utf8(data)
        .ok()
        .and_then(|t| serde_json::from_str::<RunParams>(t).ok())
    {
        Some(p) => p,
        None => {
            let mut u = Unstructured::new(data);
            let Ok(spec) = Spec::arbitrary(&mut u) else {
                return;
            };
            for raw in &spec.paths {
                normal_form(&path(raw));
            }
            spec.build()
        }
    };
    judge(&p);
});

// ---- the judgement ----------------------------------------------------------------------------

fn judge(p: &RunParams) {
    let f = &*FIXTURE;
    for source in bind_sources(p) {
        normal_form(source);
    }
    let sync = validate::check_run(p, &f.policy, &f.root);
    let refs = block_on(validate::check_run_refs(p, &f.policy, &f.root, &Engine));
    if let Err(e) = &sync {
        assert_eq!(e.code, code::CONTAINER_BLOCKED, "{e:?}");
        assert!(
            e.data.as_ref().is_some_and(|d| d["rule"].is_string()),
            "{e:?}"
        );
    }
    if let Err(e) = &refs {
        // A name that is not a Docker reference is refused as bad params (issue 12.2).
        assert!(
            matches!(
                e.code,
                code::CONTAINER_BLOCKED | code::NOT_FOUND | code::INVALID_PARAMS
            ),
            "{e:?}"
        );
    }
    if sync.is_ok() {
        accepted(p, &f.policy, &f.root);
        if refs.is_ok() {
            accepted_refs(p);
        }
    }
    if validate::check_image(&p.image, &f.images).is_ok() {
        let r = image::normalize(&p.image).expect("an allowed image is a reference");
        assert!(
            r.repository.starts_with("ghcr.io/acme/"),
            "{:?} → {r:?}",
            p.image
        );
    }
}

/// The rules, restated, that accepted params must satisfy under the default policy.
fn accepted(p: &RunParams, policy: &HostPolicy, root: &Path) {
    assert!(!p.privileged);
    for c in &p.cap_add {
        let name = validate::capability(c).expect("an accepted capability is a name");
        assert!(
            DOCKER_DEFAULT_CAPS.contains(&name.as_str()),
            "cap_add {c:?}"
        );
    }
    let modes = [
        &p.pid_mode,
        &p.ipc_mode,
        &p.uts_mode,
        &p.userns_mode,
        &p.cgroupns_mode,
        &p.network_mode,
    ];
    for m in modes.into_iter().flatten() {
        assert_ne!(m.trim().to_ascii_lowercase(), "host", "{p:?}");
    }
    assert!(
        p.devices.is_empty() && p.device_cgroup_rules.is_empty(),
        "{p:?}"
    );
    for o in &p.security_opt {
        let o = validate::security_opt(o);
        assert_eq!(o.key, "no-new-privileges", "{o:?}");
        let on = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "1" | "t" | "true");
        assert!(o.value.as_deref().is_none_or(on), "{o:?}");
    }
    for k in p.sysctls.keys() {
        assert!(
            k.trim().replace('/', ".").starts_with("net."),
            "sysctl {k:?}"
        );
    }
    for m in &p.mounts {
        let kind = m.kind.trim().to_ascii_lowercase();
        assert!(
            matches!(kind.as_str(), "bind" | "volume" | "tmpfs"),
            "{m:?}"
        );
    }
    for source in bind_sources(p) {
        let lexical = paths::normalize(source).expect("an accepted bind source is absolute");
        let resolved = paths::resolve(root, source).expect("it resolves").path;
        for form in [&lexical, &resolved] {
            assert!(
                paths::protected(form, &policy.protected_extra).is_none(),
                "bind source {source:?} is {form}: protected"
            );
            let mut roots: Vec<&str> = DEFAULT_BIND_ROOTS.to_vec();
            roots.push(VOLUME_BASE);
            let resolved_roots: Vec<String> = roots
                .iter()
                .filter_map(|r| paths::resolve(root, r).ok().map(|x| x.path))
                .collect();
            assert!(
                roots.iter().any(|r| paths::is_under(form, r))
                    || resolved_roots.iter().any(|r| paths::is_under(form, r)),
                "bind source {source:?} is {form}: outside the bind roots"
            );
        }
    }
}

/// What the engine-backed checks must have refused.
fn accepted_refs(p: &RunParams) {
    for v in &p.volumes_from {
        let name = v.split(':').next().unwrap_or_default();
        assert_ne!(name, "priv", "volumes_from {v:?}");
    }
    for m in [&p.pid_mode, &p.ipc_mode, &p.network_mode]
        .into_iter()
        .flatten()
    {
        let lower = m.trim().to_ascii_lowercase();
        if lower.starts_with("container:") {
            let target = m.trim()["container:".len()..].trim();
            assert!(!BAD_CONTAINERS.contains(&target), "joins {m:?}");
        }
    }
    if let Some(n) = &p.network_mode {
        assert_ne!(n.trim(), "hostnet", "network {n:?}");
    }
    // Named volumes only: a tmpfs mount's source is no volume (the conversion to the engine's
    // mount refuses any source on one), and a bind's source is a host path.
    let named = p.volumes.iter().map(|v| v.source.as_str()).chain(
        p.mounts
            .iter()
            .filter(|m| m.kind.trim().eq_ignore_ascii_case("volume"))
            .filter_map(|m| m.source.as_deref()),
    );
    for name in named {
        assert_ne!(name, "bindvol", "the volume binds /etc");
    }
}

/// Every host path the params would bind-mount, as the rules define a bind.
fn bind_sources(p: &RunParams) -> Vec<&str> {
    let mut out = Vec::new();
    for v in &p.volumes {
        if v.source.starts_with('/') || !is_volume_name(&v.source) {
            out.push(v.source.as_str());
        }
    }
    for m in &p.mounts {
        match m.kind.trim().to_ascii_lowercase().as_str() {
            "bind" => out.push(m.source.as_deref().unwrap_or_default()),
            "volume" => {
                let opts: Vec<(String, &str)> = m
                    .volume_driver_opts
                    .iter()
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.as_str()))
                    .collect();
                let binds = opts.iter().any(|(k, v)| {
                    (k == "o"
                        && v.split(',').any(|f| {
                            matches!(f.trim().to_ascii_lowercase().as_str(), "bind" | "rbind")
                        }))
                        || (k == "type"
                            && matches!(
                                v.trim().to_ascii_lowercase().as_str(),
                                "none" | "bind" | "rbind"
                            ))
                });
                if binds {
                    out.extend(opts.iter().filter(|(k, _)| k == "device").map(|(_, v)| *v));
                }
            }
            _ => {}
        }
    }
    out
}

/// Docker's volume name rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn is_volume_name(s: &str) -> bool {
    s.len() >= 2
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The normal form of a path: absolute, no empty, `.` or `..` component, no trailing `/`,
/// idempotent; and what it resolves to is in normal form too.
fn normal_form(raw: &str) {
    let Some(n) = paths::normalize(raw) else {
        assert!(
            !raw.starts_with('/') || raw.contains('\0'),
            "{raw:?} has no normal form"
        );
        return;
    };
    assert!(n.starts_with('/'), "{raw:?} → {n:?}");
    assert!(n == "/" || !n.ends_with('/'), "{raw:?} → {n:?}");
    assert!(
        n == "/"
            || n[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
        "{raw:?} → {n:?}"
    );
    assert_eq!(paths::normalize(&n).as_ref(), Some(&n), "{raw:?}");
    assert_eq!(
        paths::normalize(&format!("{n}/./")).as_ref(),
        Some(&n),
        "{raw:?}"
    );
    if let Ok(r) = paths::resolve(&FIXTURE.root, raw) {
        assert_eq!(
            paths::normalize(&r.path).as_ref(),
            Some(&r.path),
            "{raw:?} → {r:?}"
        );
    }
}

// ---- a fake engine ----------------------------------------------------------------------------

/// Containers whose namespaces must not be joined (`priv` is privileged, `hostns` uses the host's
/// namespaces, `chain` joins `hostns`'s); only `priv`'s volumes are refused.
const BAD_CONTAINERS: &[&str] = &["priv", "hostns", "chain"];

struct Engine;

impl Lookup for Engine {
    fn container(
        &self,
        name: &ContainerRef,
    ) -> impl Future<Output = Result<Option<ContainerInspectResponse>, RpcError>> + Send {
        let name = name.as_str();
        let hc = |hc: HostConfig| {
            Some(ContainerInspectResponse {
                host_config: Some(hc),
                ..Default::default()
            })
        };
        let host = || Some("host".to_owned());
        let join = || Some("container:hostns".to_owned());
        let c = match name {
            "plain" => hc(HostConfig::default()),
            "priv" => hc(HostConfig {
                privileged: Some(true),
                ..Default::default()
            }),
            "hostns" => hc(HostConfig {
                pid_mode: host(),
                ipc_mode: host(),
                network_mode: host(),
                ..Default::default()
            }),
            "chain" => hc(HostConfig {
                pid_mode: join(),
                ipc_mode: join(),
                network_mode: join(),
                ..Default::default()
            }),
            _ => None,
        };
        std::future::ready(Ok(c))
    }

    fn volume(
        &self,
        name: &VolumeRef,
    ) -> impl Future<Output = Result<Option<Volume>, RpcError>> + Send {
        let name = name.as_str();
        let v = (name == "bindvol").then(|| Volume {
            name: name.to_owned(),
            driver: "local".to_owned(),
            options: BTreeMap::from([
                ("o".to_owned(), "bind".to_owned()),
                ("device".to_owned(), "/etc".to_owned()),
            ])
            .into_iter()
            .collect(),
            ..Default::default()
        });
        std::future::ready(Ok(v))
    }

    fn network_driver(
        &self,
        name: &NetworkRef,
    ) -> impl Future<Output = Result<Option<String>, RpcError>> + Send {
        let name = name.as_str();
        let d = match name {
            "hostnet" => Some("host".to_owned()),
            "appnet" => Some("bridge".to_owned()),
            _ => None,
        };
        std::future::ready(Ok(d))
    }
}

/// The validation futures only wait on the fake engine, which is always ready.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("a validation future kept waiting");
}

/// A small host tree with the symlinks that matter, under the temporary directory (made once,
/// shared by runs).
fn host_root() -> PathBuf {
    let root = std::env::temp_dir().join("tomo-fuzz-host-root");
    for dir in [
        "etc",
        "srv/app",
        "srv/tomo",
        "srv/tomo-data",
        "data",
        "tmp",
        "run",
        "opt",
        "mnt",
    ] {
        std::fs::create_dir_all(root.join(dir)).expect("a fixture directory");
    }
    let links = [
        ("srv/etc-abs", "/etc"),
        ("srv/etc-rel", "../etc"),
        ("srv/up", "../.."),
        ("srv/key", "/srv/tomo-data"),
        ("tmp/loop", "loop"),
        ("tmp/run", "/run"),
        ("opt/dots", "./../etc"),
        ("mnt/app", "/srv/app"),
        ("mnt/sock", "/run/docker.sock"),
    ];
    for (link, target) in links {
        let path = root.join(link);
        if std::fs::symlink_metadata(&path).is_err() {
            let _ = std::os::unix::fs::symlink(target, &path);
        }
    }
    let sock = root.join("run/docker.sock");
    if std::fs::symlink_metadata(&sock).is_err() {
        let _ = std::os::unix::net::UnixListener::bind(&sock);
    }
    root
}

// ---- structured input -------------------------------------------------------------------------

/// A string: from the field's vocabulary, a path, or anything.
#[derive(Debug, Arbitrary)]
enum Word {
    Known(u8),
    Path(PathSpec),
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct PathSpec {
    absolute: bool,
    segments: Vec<Segment>,
    trailing_slash: bool,
}

#[derive(Debug, Arbitrary)]
enum Segment {
    Empty,
    Dot,
    DotDot,
    Name(u8),
    Raw(String),
}

const NAMES: &[&str] = &[
    "etc",
    "ETC",
    "srv",
    "tmp",
    "data",
    "var",
    "run",
    "docker.sock",
    "lib",
    "lib64",
    "proc",
    "usr",
    "opt",
    "mnt",
    "app",
    "tomo",
    "tomo-data",
    "etc-abs",
    "etc-rel",
    "up",
    "key",
    "loop",
    "dots",
    "sock",
    "shadow",
    "...",
    "home",
    "media",
];
const PATHS: &[&str] = &[
    "/",
    "//",
    "/srv/app",
    "/srv/app/",
    "/srv/./app",
    "/srv/../etc",
    "/srv//app",
    "/SRV/app",
    "srv/app",
    "./srv",
    "~/x",
    "/srv/etc-abs",
    "/srv/etc-rel/passwd",
    "/srv/up/etc",
    "/srv/key",
    "/tmp/loop",
    "/tmp/run/docker.sock",
    "/opt/dots",
    "/mnt/app",
    "/mnt/sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/lib",
    "/lib64/x",
    "/library",
    "/srv/tomo",
    "/srv/tomo-data/agent.key",
    "/data",
    "/proc/1/root",
    "/dev/sda",
    "/tmp/../etc",
    "/media/../../etc",
    "",
    "bindvol",
    "vol1",
    "/tmp/\0/x",
];
const IMAGES: &[&str] = &[
    "busybox",
    "ghcr.io/acme/app",
    "GHCR.IO/acme/app:1",
    "ghcr.io/acme-evil/app",
    "ghcr.io/acme",
    "ghcr.io/acme/../evil",
    "ghcr.io.evil.com/acme/app",
    "sha256:0123456789abcdef",
    "0123456789ab",
    "ghcr.io/acme/app@sha256:00",
    " ghcr.io/acme/app ",
    "",
];
const CAPS: &[&str] = &[
    "CHOWN",
    "cap_chown",
    " net_raw ",
    "SYS_ADMIN",
    "cap_sys_admin",
    "ALL",
    "all",
    "NET_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "CAP_",
    "",
    "Cap_Kill",
];
const MODES: &[&str] = &[
    "",
    "host",
    "HOST",
    " host ",
    "Host\t",
    "private",
    "shareable",
    "none",
    "container:plain",
    "container:priv",
    "CONTAINER: hostns",
    "container:chain",
    "container:",
    "container:nope",
    "bridge",
    "hostnet",
    "appnet",
    "default",
    "cgroup",
    "slirp4netns:allow_host_loopback=true",
];
const SECURITY: &[&str] = &[
    "no-new-privileges",
    "no-new-privileges=true",
    "no-new-privileges:true",
    "NO-NEW-PRIVILEGES=1",
    "no-new-privileges=false",
    "no-new-privileges:0",
    "seccomp=unconfined",
    "seccomp:unconfined",
    "apparmor=unconfined",
    "label=disable",
    "label:disable",
    "systempaths=unconfined",
    "disable",
];
const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net/ipv4/ip_forward",
    " net.core.somaxconn ",
    "kernel.shmmax",
    "kernel.sem",
    "fs.mqueue.msg_max",
    "net..x",
    ".net",
    "net",
    "vm.swappiness",
    "kernel.core_pattern",
];
const KINDS: &[&str] = &[
    "bind", "BIND", " volume ", "volume", "tmpfs", "npipe", "cluster", "",
];
const OPT_KEYS: &[&str] = &[
    "o", "O", " type", "type", "device", "Device", "device ", "size", "uid",
];
const OPT_VALUES: &[&str] = &[
    "bind",
    "rbind",
    "ro,bind",
    "addr=1.2.3.4, Bind",
    "none",
    "BIND",
    "nfs",
    "tmpfs",
    "ext4",
    "/etc",
    "/srv/app",
    "100m",
];
const CONTAINERS: &[&str] = &[
    "plain", "priv", "hostns", "chain", "nope", "priv:ro", "plain:rw",
];

#[derive(Debug, Arbitrary)]
struct Spec {
    image: Word,
    privileged: bool,
    cap_add: Vec<Word>,
    modes: [Option<Word>; 6],
    devices: Vec<Word>,
    device_cgroup_rules: Vec<Word>,
    security_opt: Vec<Word>,
    sysctls: Vec<Word>,
    volumes: Vec<Word>,
    mounts: Vec<MountInput>,
    volumes_from: Vec<Word>,
    /// More paths whose normal form is checked.
    paths: Vec<Word>,
}

#[derive(Debug, Arbitrary)]
struct MountInput {
    kind: Word,
    source: Option<Word>,
    opts: Vec<(Word, Word)>,
}

fn pick(w: &Word, vocab: &[&str]) -> String {
    match w {
        Word::Known(i) => vocab[usize::from(*i) % vocab.len()].to_owned(),
        Word::Path(p) => spell(p),
        Word::Raw(s) => s.clone(),
    }
}

fn path(w: &Word) -> String {
    pick(w, PATHS)
}

fn spell(p: &PathSpec) -> String {
    let mut out = String::new();
    for (i, s) in p.segments.iter().enumerate() {
        if p.absolute || i > 0 {
            out.push('/');
        }
        match s {
            Segment::Empty => {}
            Segment::Dot => out.push('.'),
            Segment::DotDot => out.push_str(".."),
            Segment::Name(n) => out.push_str(NAMES[usize::from(*n) % NAMES.len()]),
            Segment::Raw(r) => out.push_str(r),
        }
    }
    if p.trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

impl Spec {
    fn build(&self) -> RunParams {
        let list = |ws: &[Word], vocab: &[&str]| ws.iter().map(|w| pick(w, vocab)).collect();
        let mode = |i: usize| self.modes[i].as_ref().map(|w| pick(w, MODES));
        RunParams {
            image: pick(&self.image, IMAGES),
            privileged: self.privileged,
            cap_add: list(&self.cap_add, CAPS),
            pid_mode: mode(0),
            ipc_mode: mode(1),
            uts_mode: mode(2),
            userns_mode: mode(3),
            cgroupns_mode: mode(4),
            network_mode: mode(5),
            devices: list(&self.devices, PATHS),
            device_cgroup_rules: list(&self.device_cgroup_rules, &["c 1:3 rwm", "a *:* rwm"]),
            security_opt: list(&self.security_opt, SECURITY),
            sysctls: self
                .sysctls
                .iter()
                .map(|w| (pick(w, SYSCTLS), "1".to_owned()))
                .collect(),
            volumes: self
                .volumes
                .iter()
                .map(|w| VolumeBinding {
                    source: path(w),
                    target: "/mnt".to_owned(),
                    read_only: false,
                })
                .collect(),
            mounts: self
                .mounts
                .iter()
                .map(|m| MountSpec {
                    kind: pick(&m.kind, KINDS),
                    source: m.source.as_ref().map(path),
                    target: "/mnt".to_owned(),
                    read_only: false,
                    tmpfs_size: None,
                    volume_driver_opts: m
                        .opts
                        .iter()
                        .map(|(k, v)| (pick(k, OPT_KEYS), pick(v, OPT_VALUES)))
                        .collect(),
                })
                .collect(),
            volumes_from: list(&self.volumes_from, CONTAINERS),
            ..Default::default()
        }
    }
}
