//! Unit tests of the validation rules, without an engine: a fake [`Lookup`] stands for it and a
//! temporary directory for the host's root.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerConfig, DeviceMapping, DeviceRequest, HostConfigCgroupnsModeEnum, Mount, MountPoint,
    MountVolumeOptions, MountVolumeOptionsDriverConfig,
};
use tomo_proto::methods::{MountSpec, VolumeBinding};

use super::*;

const BASE: &str = "/srv/tomo";

/// A refusal's rule and param.
type Refusal = Option<(String, String)>;
/// One row: its name, its input, the refusal it must get (`None`: allowed).
type Case<T> = (&'static str, T, Refusal);

fn defaults() -> HostPolicy {
    HostPolicy::default_for(Path::new(BASE))
}

/// A host root with `/var/run/docker.sock` (a socket is not needed: the path is protected),
/// `/mnt/t/link -> /var/run`, `/srv/app` and `/srv/link -> /etc`.
fn host() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    for d in ["var/run", "mnt/t", "srv/app", "etc", "dev"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::write(r.join("var/run/docker.sock"), b"").expect("file");
    std::os::unix::fs::symlink("/var/run", r.join("mnt/t/link")).expect("link");
    std::os::unix::fs::symlink("/etc", r.join("srv/link")).expect("link");
    std::os::unix::fs::symlink("../var/run", r.join("srv/rel")).expect("link");
    // Whatever the umask: no directory of the fixture is writable by others unless a test says so.
    for d in [
        "var/run", "var", "mnt/t", "mnt", "srv/app", "srv", "etc", "dev", "",
    ] {
        set_mode(&r.join(d), 0o755);
    }
    root
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The rule and param of a refusal, `None` when allowed.
fn outcome(r: Result<(), RpcError>) -> Refusal {
    r.err().map(|e| {
        assert_eq!(e.code, code::CONTAINER_BLOCKED, "{}", e.message);
        let data = e.data.unwrap_or_default();
        assert!(
            e.message.contains(data["rule"].as_str().unwrap_or("?")),
            "the message names the rule: {}",
            e.message
        );
        (
            data["rule"].as_str().unwrap_or_default().to_owned(),
            data["param"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

fn run(f: impl FnOnce(&mut RunParams)) -> RunParams {
    let mut p = RunParams {
        image: "tomo-test/busybox:latest".into(),
        ..Default::default()
    };
    f(&mut p);
    p
}

fn bind(source: &str) -> RunParams {
    run(|p| {
        p.volumes = vec![VolumeBinding {
            source: source.into(),
            target: "/x".into(),
            read_only: false,
        }];
    })
}

fn mount(kind: &str, source: Option<&str>, opts: &[(&str, &str)]) -> RunParams {
    run(|p| {
        p.mounts = vec![MountSpec {
            kind: kind.into(),
            source: source.map(str::to_owned),
            target: "/x".into(),
            read_only: false,
            tmpfs_size: None,
            volume_driver_opts: opts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }];
    })
}

fn rule(r: &str, param: &str) -> Refusal {
    Some((r.to_owned(), param.to_owned()))
}

#[test]
fn run_options_table() {
    let root = host();
    let policy = defaults();
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    // (case, params, expected rule and param)
    let cases: Vec<Case<RunParams>> = vec![
        ("plain", run(|_| {}), None),
        (
            "privileged",
            run(|p| p.privileged = true),
            rule("privileged", "privileged"),
        ),
        (
            "cap default",
            run(|p| p.cap_add = strings(&["NET_BIND_SERVICE"])),
            None,
        ),
        (
            "cap lower+prefix",
            run(|p| p.cap_add = strings(&["cap_chown", " kill "])),
            None,
        ),
        (
            "cap SYS_ADMIN",
            run(|p| p.cap_add = strings(&["SYS_ADMIN"])),
            rule("cap_add", "cap_add[0]"),
        ),
        (
            "cap sys_admin",
            run(|p| p.cap_add = strings(&["CHOWN", "sys_admin"])),
            rule("cap_add", "cap_add[1]"),
        ),
        (
            "cap CAP_SYS_ADMIN",
            run(|p| p.cap_add = strings(&["CAP_SYS_ADMIN"])),
            rule("cap_add", "cap_add[0]"),
        ),
        (
            "cap all",
            run(|p| p.cap_add = strings(&["all"])),
            rule("cap_add", "cap_add[0]"),
        ),
        (
            "cap cap_all",
            run(|p| p.cap_add = strings(&["cap_all"])),
            rule("cap_add", "cap_add[0]"),
        ),
        (
            "cap garbage",
            run(|p| p.cap_add = strings(&["NET ADMIN"])),
            rule("cap_add", "cap_add[0]"),
        ),
        (
            "cap drop anything",
            run(|p| p.cap_drop = strings(&["ALL"])),
            None,
        ),
        (
            "pid host",
            run(|p| p.pid_mode = Some("host".into())),
            rule("namespace", "pid_mode"),
        ),
        (
            "ipc HOST",
            run(|p| p.ipc_mode = Some("HOST".into())),
            rule("namespace", "ipc_mode"),
        ),
        (
            "uts host",
            run(|p| p.uts_mode = Some(" host ".into())),
            rule("namespace", "uts_mode"),
        ),
        (
            "userns host",
            run(|p| p.userns_mode = Some("host".into())),
            rule("namespace", "userns_mode"),
        ),
        (
            "cgroupns host",
            run(|p| p.cgroupns_mode = Some("host".into())),
            rule("namespace", "cgroupns_mode"),
        ),
        (
            "network host",
            run(|p| p.network_mode = Some("Host".into())),
            rule("namespace", "network_mode"),
        ),
        (
            "network none",
            run(|p| p.network_mode = Some("none".into())),
            None,
        ),
        (
            "ipc shareable",
            run(|p| p.ipc_mode = Some("shareable".into())),
            None,
        ),
        (
            "uts container",
            run(|p| p.uts_mode = Some("container:x".into())),
            rule("namespace", "uts_mode"),
        ),
        (
            "pid unknown",
            run(|p| p.pid_mode = Some("weird".into())),
            rule("namespace", "pid_mode"),
        ),
        (
            "device",
            run(|p| p.devices = strings(&["/dev/sda"])),
            rule("devices", "devices[0]"),
        ),
        (
            "device relative",
            run(|p| p.devices = strings(&["sda:/dev/sda"])),
            rule("devices", "devices[0]"),
        ),
        (
            "cgroup rule",
            run(|p| p.device_cgroup_rules = strings(&["a *:* rwm"])),
            rule("device_cgroup_rules", "device_cgroup_rules[0]"),
        ),
        (
            "nnp",
            run(|p| p.security_opt = strings(&["no-new-privileges"])),
            None,
        ),
        (
            "nnp true",
            run(|p| p.security_opt = strings(&["no-new-privileges:true", "NO-NEW-PRIVILEGES=1"])),
            None,
        ),
        (
            "nnp false",
            run(|p| p.security_opt = strings(&["no-new-privileges=false"])),
            rule("security_opt", "security_opt[0]"),
        ),
        (
            "seccomp=",
            run(|p| p.security_opt = strings(&["seccomp=unconfined"])),
            rule("seccomp", "security_opt[0]"),
        ),
        (
            "seccomp:",
            run(|p| p.security_opt = strings(&["seccomp:unconfined"])),
            rule("seccomp", "security_opt[0]"),
        ),
        (
            "SECCOMP",
            run(|p| p.security_opt = strings(&["SECCOMP=Unconfined"])),
            rule("seccomp", "security_opt[0]"),
        ),
        (
            "seccomp profile",
            run(|p| p.security_opt = strings(&[r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW"}"#])),
            rule("seccomp", "security_opt[0]"),
        ),
        (
            "apparmor",
            run(|p| p.security_opt = strings(&["apparmor=unconfined"])),
            rule("apparmor", "security_opt[0]"),
        ),
        (
            "apparmor:",
            run(|p| p.security_opt = strings(&[" AppArmor:unconfined"])),
            rule("apparmor", "security_opt[0]"),
        ),
        (
            "label=disable",
            run(|p| p.security_opt = strings(&["label=disable"])),
            rule("label", "security_opt[0]"),
        ),
        (
            "label:disable",
            run(|p| p.security_opt = strings(&["label:disable"])),
            rule("label", "security_opt[0]"),
        ),
        (
            "bare disable",
            run(|p| p.security_opt = strings(&["disable"])),
            rule("label", "security_opt[0]"),
        ),
        (
            "label type",
            run(|p| p.security_opt = strings(&["label=type:spc_t"])),
            rule("label", "security_opt[0]"),
        ),
        (
            "systempaths",
            run(|p| p.security_opt = strings(&["systempaths=unconfined"])),
            rule("systempaths", "security_opt[0]"),
        ),
        (
            "sysctl net",
            run(|p| p.sysctls = BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())])),
            None,
        ),
        (
            "sysctl kernel",
            run(|p| p.sysctls = BTreeMap::from([("kernel.shmmax".into(), "1".into())])),
            rule("sysctls", "sysctls.kernel.shmmax"),
        ),
        (
            "sysctl slash",
            run(|p| p.sysctls = BTreeMap::from([("kernel/core_pattern".into(), "|x".into())])),
            rule("sysctls", "sysctls.kernel/core_pattern"),
        ),
        (
            "sysctl net on host net",
            run(|p| {
                p.network_mode = Some("container:x".into());
                p.sysctls = BTreeMap::from([("net.core.somaxconn".into(), "1".into())]);
            }),
            rule("sysctls", "sysctls.net.core.somaxconn"),
        ),
        (
            "sysctl bad",
            run(|p| p.sysctls = BTreeMap::from([("net..x".into(), "1".into())])),
            rule("sysctls", "sysctls.net..x"),
        ),
        (
            "bind sock",
            bind("/var/run/docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind //",
            bind("/var/run//docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind /./",
            bind("/var/run/./docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind ..",
            bind("/var/lib/../run/docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind /run",
            bind("/run/docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind trailing /",
            bind("/var/run/docker.sock/"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind symlink abs",
            bind("/mnt/t/link/docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind symlink rel",
            bind("/srv/rel/docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind symlink dir",
            bind("/srv/link"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind missing then ..",
            bind("/mnt/t/nope/../link/docker.sock"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind escape",
            bind("/tmp/../../../etc"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind /",
            bind("/"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind /etc",
            bind("/etc"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind /etc/",
            bind("/etc/"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind /lib64",
            bind("/lib64"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "bind /ETC",
            bind("/ETC"),
            rule("bind_outside_roots", "volumes[0].source"),
        ),
        (
            "bind /srvx",
            bind("/srvx/a"),
            rule("bind_outside_roots", "volumes[0].source"),
        ),
        (
            "bind relative",
            bind("relative/path"),
            rule("bind_relative", "volumes[0].source"),
        ),
        (
            "bind ~",
            bind("~/x"),
            rule("bind_relative", "volumes[0].source"),
        ),
        (
            "bind ./",
            bind("./x"),
            rule("bind_relative", "volumes[0].source"),
        ),
        ("bind ok", bind("/srv/app"), None),
        ("bind mnt ok", bind("/mnt/t/data"), None),
        (
            "bind tmp outside the defaults",
            bind("/tmp/t"),
            rule("bind_outside_roots", "volumes[0].source"),
        ),
        ("bind base ok", bind("/srv/tomo/app"), None),
        ("named volume", bind("data"), None),
        (
            "mount bind sock",
            mount("bind", Some("/var/run/docker.sock"), &[]),
            rule("bind_protected", "mounts[0].source"),
        ),
        (
            "mount BIND etc",
            mount("BIND", Some("/etc//"), &[]),
            rule("bind_protected", "mounts[0].source"),
        ),
        (
            "mount bind relative",
            mount("bind", Some("etc"), &[]),
            rule("bind_relative", "mounts[0].source"),
        ),
        (
            "mount bind none",
            mount("bind", None, &[]),
            rule("bind_relative", "mounts[0].source"),
        ),
        ("mount bind ok", mount("bind", Some("/srv/app"), &[]), None),
        (
            "mount volume bind etc",
            mount(
                "volume",
                Some("v1"),
                &[("o", "bind"), ("type", "none"), ("device", "/etc")],
            ),
            rule("bind_protected", "mounts[0].volume_driver_opts.device"),
        ),
        (
            "mount volume rbind",
            mount(
                "volume",
                None,
                &[("O", "ro, RBIND"), ("device", "/var/run")],
            ),
            rule("bind_protected", "mounts[0].volume_driver_opts.device"),
        ),
        (
            "mount volume type none",
            mount("volume", None, &[("type", "none"), ("device", "/")]),
            rule("bind_protected", "mounts[0].volume_driver_opts.device"),
        ),
        (
            "mount volume bind ok",
            mount("volume", None, &[("o", "bind"), ("device", "/srv/app")]),
            None,
        ),
        (
            "mount volume ext4",
            mount("volume", None, &[("type", "ext4"), ("device", "/dev/sda1")]),
            rule("volume_type", "mounts[0].volume_driver_opts"),
        ),
        (
            "mount volume overlay",
            mount(
                "volume",
                None,
                &[("type", "overlay"), ("o", "lowerdir=/etc")],
            ),
            rule("volume_type", "mounts[0].volume_driver_opts"),
        ),
        (
            "mount volume device only",
            mount("volume", None, &[("device", "/dev/sda1")]),
            rule("volume_type", "mounts[0].volume_driver_opts"),
        ),
        (
            "mount volume unknown opt",
            mount("volume", None, &[("mountpoint", "/etc")]),
            rule("volume_options", "mounts[0].volume_driver_opts"),
        ),
        (
            "mount volume tmpfs",
            mount(
                "volume",
                None,
                &[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=10m")],
            ),
            None,
        ),
        ("mount tmpfs", mount("tmpfs", None, &[]), None),
        (
            "mount npipe",
            mount("npipe", Some("/x"), &[]),
            rule("mount_type", "mounts[0].type"),
        ),
        ("image ok", run(|p| p.image = "nginx".into()), None),
    ];
    for (name, p, want) in cases {
        assert_eq!(
            outcome(check_run(&p, &policy, root.path())),
            want,
            "case {name}"
        );
    }
}

#[test]
fn the_policy_widens_and_narrows() {
    let root = host();
    let text = r#"
images = ["docker.io/library/*", "127.0.0.1:5055/*", "tomo-test/*"]
cap_add_allowed = ["NET_ADMIN"]
devices = ["/dev/tty*"]
device_cgroup_rules = ["c 188:* rwm"]
security_opt = ["apparmor=my-profile"]
sysctls = ["net.*", "kernel.shm*"]
bind_roots = ["/srv/app"]
volume_types = ["ext4"]
"#;
    let policy = HostPolicy::from_toml(text, Path::new("p.toml"), Path::new(BASE)).expect("policy");
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    std::fs::write(root.path().join("dev/ttyUSB0"), b"").expect("file");
    std::os::unix::fs::symlink("/dev/ttyUSB0", root.path().join("dev/serial")).expect("link");
    let cases: Vec<Case<RunParams>> = vec![
        ("image library", run(|p| p.image = "nginx:1".into()), None),
        (
            "image registry",
            run(|p| p.image = "127.0.0.1:5055/tomo-test/busybox".into()),
            None,
        ),
        (
            "image other",
            run(|p| p.image = "ghcr.io/evil/x".into()),
            rule("image", "image"),
        ),
        (
            "image hub user",
            run(|p| p.image = "evil/nginx".into()),
            rule("image", "image"),
        ),
        (
            "image id",
            run(|p| p.image = "sha256:0123456789abcdef".into()),
            rule("image", "image"),
        ),
        (
            "cap net_admin",
            run(|p| p.cap_add = strings(&["cap_net_admin"])),
            None,
        ),
        (
            "cap chown now refused",
            run(|p| p.cap_add = strings(&["CHOWN"])),
            rule("cap_add", "cap_add[0]"),
        ),
        (
            "device tty",
            run(|p| p.devices = strings(&["/dev/ttyUSB0:/dev/x:rw"])),
            None,
        ),
        (
            "device by symlink",
            run(|p| p.devices = strings(&["/dev/serial"])),
            None,
        ),
        (
            "device sda",
            run(|p| p.devices = strings(&["/dev/sda"])),
            rule("devices", "devices[0]"),
        ),
        (
            "cgroup rule",
            run(|p| p.device_cgroup_rules = strings(&["C 188:*  RWM"])),
            None,
        ),
        (
            "apparmor profile",
            run(|p| p.security_opt = strings(&["apparmor:my-profile"])),
            None,
        ),
        (
            "apparmor unconfined",
            run(|p| p.security_opt = strings(&["apparmor=unconfined"])),
            rule("apparmor", "security_opt[0]"),
        ),
        (
            "sysctl shm",
            run(|p| p.sysctls = BTreeMap::from([("kernel.shmmax".into(), "1".into())])),
            None,
        ),
        (
            "sysctl shm host ipc",
            run(|p| {
                p.ipc_mode = Some("container:x".into());
                p.sysctls = BTreeMap::from([("kernel.shmmax".into(), "1".into())]);
            }),
            rule("sysctls", "sysctls.kernel.shmmax"),
        ),
        ("bind root", bind("/srv/app/x"), None),
        (
            "bind tmp now outside",
            bind("/tmp/t"),
            rule("bind_outside_roots", "volumes[0].source"),
        ),
        ("bind base", bind("/srv/tomo/x"), None),
        (
            "volume ext4",
            mount("volume", None, &[("type", "ext4"), ("device", "/dev/sdb1")]),
            None,
        ),
        (
            "volume tmpfs now refused",
            mount("volume", None, &[("type", "tmpfs")]),
            rule("volume_type", "mounts[0].volume_driver_opts"),
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(
            outcome(check_run(&p, &policy, root.path())),
            want,
            "case {name}"
        );
    }
}

#[test]
fn the_agent_data_dir_is_never_bound() {
    let root = host();
    let policy = defaults().protect(Path::new("/data"));
    assert_eq!(
        outcome(check_run(&bind("/data/agent.key"), &policy, root.path())),
        rule("bind_protected", "volumes[0].source")
    );
    assert_eq!(
        outcome(check_run(&bind("/database"), &policy, root.path())),
        rule("bind_outside_roots", "volumes[0].source")
    );
}

/// Issue 12.1: binding the parent of the agent's data directory exposed its key; a directory
/// that holds a protected path (as written, or where a symlink moved it) is refused too.
#[test]
fn ancestors_of_protected_paths_are_never_bound() {
    let root = host();
    let r = root.path();
    std::fs::create_dir_all(r.join("var/lib")).expect("mkdir");
    std::fs::create_dir_all(r.join("srv/docker/volumes")).expect("mkdir");
    std::os::unix::fs::symlink("/srv/docker", r.join("var/lib/docker")).expect("link");
    let text = r#"protected = ["/opt/tomo-dev"]"#;
    let policy = HostPolicy::from_toml(text, Path::new("p.toml"), Path::new(BASE))
        .expect("policy")
        .protect(Path::new("/data/agent"));
    let cases: Vec<Case<RunParams>> = vec![
        (
            "agent dir parent",
            bind("/data"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "agent dir parent, spelt",
            bind("/data/x/../"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "agent dir",
            bind("/data/agent"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "agent key",
            bind("/data/agent/agent.key"),
            rule("bind_protected", "volumes[0].source"),
        ),
        ("beside the agent dir", bind("/data/app"), None),
        (
            "policy's protected parent",
            bind("/opt"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "policy's protected inside",
            bind("/opt/tomo-dev/server/tomo.db"),
            rule("bind_protected", "volumes[0].source"),
        ),
        ("beside it", bind("/opt/app"), None),
        (
            "moved docker root's parent",
            bind("/srv"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "moved docker root",
            bind("/srv/docker/volumes"),
            rule("bind_protected", "volumes[0].source"),
        ),
        ("beside the docker root", bind("/srv/app"), None),
    ];
    for (name, p, want) in cases {
        assert_eq!(outcome(check_run(&p, &policy, r)), want, "case {name}");
    }
    let e = check_run(&bind("/data"), &policy, r).expect_err("parent");
    assert!(
        e.message.contains("holds the protected /data/agent"),
        "{}",
        e.message
    );
    assert!(
        HostPolicy::from_toml(
            r#"protected = ["rel"]"#,
            Path::new("p.toml"),
            Path::new(BASE)
        )
        .is_err()
    );
}

/// Issue 12.1: any local user can plant a symlink in a directory others can write to (`/tmp`);
/// a source that crosses one is refused unless the policy file names its root.
#[test]
fn sources_crossing_directories_others_can_write_are_refused() {
    let root = host();
    let r = root.path();
    for (dir, mode) in [("srv/sticky", 0o1777), ("srv/open", 0o777)] {
        std::fs::create_dir_all(r.join(dir).join("app")).expect("mkdir");
        set_mode(&r.join(dir), mode);
    }
    std::os::unix::fs::symlink("/srv/sticky/app", r.join("srv/via")).expect("link");
    let blocked = rule("bind_open_dir", "volumes[0].source");
    let cases: Vec<Case<RunParams>> = vec![
        (
            "under a sticky open dir",
            bind("/srv/sticky/app"),
            blocked.clone(),
        ),
        ("under an open dir", bind("/srv/open/app"), blocked.clone()),
        (
            "through a symlink into one",
            bind("/srv/via"),
            blocked.clone(),
        ),
        ("the open dir itself", bind("/srv/open"), None),
        ("elsewhere", bind("/srv/app"), None),
    ];
    for (name, p, want) in cases {
        assert_eq!(outcome(check_run(&p, &defaults(), r)), want, "case {name}");
    }
    let text = r#"bind_roots = ["/srv/sticky"]"#;
    let named = HostPolicy::from_toml(text, Path::new("p.toml"), Path::new(BASE)).expect("policy");
    assert_eq!(
        outcome(check_run(&bind("/srv/sticky/app"), &named, r)),
        None
    );
    // The volume base is a root, but not one the policy file names.
    assert_eq!(
        outcome(check_run(
            &bind("/srv/open/app"),
            &defaults_with_base("/srv/open"),
            r
        )),
        blocked
    );
}

fn defaults_with_base(base: &str) -> HostPolicy {
    HostPolicy::default_for(Path::new(base))
}

/// Issue 12.1: a directory holding a root-owned host socket handed it to the container.
#[test]
fn directories_holding_sockets_are_never_bound() {
    let root = host();
    let r = root.path();
    std::fs::create_dir_all(r.join("srv/app/run/deep")).expect("mkdir");
    assert_eq!(outcome(check_run(&bind("/srv/app"), &defaults(), r)), None);
    let _listener =
        std::os::unix::net::UnixListener::bind(r.join("srv/app/run/deep/x.sock")).expect("socket");
    for source in ["/srv/app", "/srv/app/run"] {
        let e = check_run(&bind(source), &defaults(), r).expect_err("holds a socket");
        assert_eq!(
            e.data,
            Some(json!({"rule": "bind_contents", "param": "volumes[0].source"})),
            "{source}"
        );
        assert!(
            e.message.contains("/srv/app/run/deep/x.sock"),
            "{}",
            e.message
        );
    }
    assert_eq!(
        outcome(check_run(&bind("/srv/app/other"), &defaults(), r)),
        None
    );
}

#[test]
fn sockets_and_devices_are_never_bound() {
    let root = host();
    let sock = root.path().join("mnt/t/s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("socket");
    assert_eq!(
        outcome(check_run(&bind("/mnt/t/s.sock"), &defaults(), root.path())),
        rule("bind_protected", "volumes[0].source")
    );
}

#[test]
fn volume_create_options() {
    let root = host();
    let policy = defaults();
    let create = |driver: Option<&str>, opts: &[(&str, &str)]| VolumeCreateParams {
        name: "v0".parse().expect("a volume name"),
        driver: driver.map(str::to_owned),
        driver_opts: opts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        labels: BTreeMap::new(),
    };
    let cases = [
        (create(None, &[]), None),
        (
            create(Some("local"), &[("type", "tmpfs"), ("device", "tmpfs")]),
            None,
        ),
        (
            create(
                None,
                &[
                    ("type", "nfs"),
                    ("o", "addr=10.0.0.1"),
                    ("device", ":/export"),
                ],
            ),
            None,
        ),
        (create(None, &[("o", "bind"), ("device", "/srv/app")]), None),
        (
            create(None, &[("o", "bind"), ("type", "none"), ("device", "/etc")]),
            rule("bind_protected", "driver_opts.device"),
        ),
        (
            create(None, &[("o", "bind"), ("device", "/mnt/t/link")]),
            rule("bind_protected", "driver_opts.device"),
        ),
        (
            create(None, &[("Type", "None"), ("DEVICE", "/var/lib/docker")]),
            rule("bind_protected", "driver_opts.device"),
        ),
        (
            create(None, &[("o", "bind"), ("device", "srv/app")]),
            rule("bind_relative", "driver_opts.device"),
        ),
        (
            create(None, &[("type", "btrfs"), ("device", "/dev/sda2")]),
            rule("volume_type", "driver_opts"),
        ),
        (create(Some("sshfs"), &[]), rule("volume_driver", "driver")),
    ];
    for (p, want) in cases {
        assert_eq!(
            outcome(check_volume_create(&p, &policy, root.path())),
            want,
            "{p:?}"
        );
    }
}

/// Host configurations of existing containers (`docker.containers.update`).
#[test]
fn host_configs_of_existing_containers() {
    let root = host();
    let policy = defaults();
    let normal = || HostConfig {
        network_mode: Some("bridge".into()),
        ipc_mode: Some("private".into()),
        pid_mode: Some(String::new()),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::HOST),
        masked_paths: Some(
            DEFAULT_MASKED_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        ),
        readonly_paths: Some(
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        ),
        binds: Some(vec!["data:/data".into(), "/srv/app:/app:ro".into()]),
        ..Default::default()
    };
    let cases: Vec<Case<HostConfig>> = vec![
        ("normal, cgroupns host as Docker records it", normal(), None),
        (
            "privileged",
            HostConfig {
                privileged: Some(true),
                ..normal()
            },
            rule("privileged", "HostConfig.Privileged"),
        ),
        (
            "cap",
            HostConfig {
                cap_add: Some(vec!["SYS_PTRACE".into()]),
                ..normal()
            },
            rule("cap_add", "HostConfig.CapAdd[0]"),
        ),
        (
            "pid host",
            HostConfig {
                pid_mode: Some("host".into()),
                ..normal()
            },
            rule("namespace", "HostConfig.PidMode"),
        ),
        (
            "net host",
            HostConfig {
                network_mode: Some("host".into()),
                ..normal()
            },
            rule("namespace", "HostConfig.NetworkMode"),
        ),
        (
            "bind sock",
            HostConfig {
                binds: Some(vec!["/var/run/docker.sock:/var/run/docker.sock".into()]),
                ..normal()
            },
            rule("bind_protected", "HostConfig.Binds[0]"),
        ),
        (
            "mount bind",
            HostConfig {
                mounts: Some(vec![Mount {
                    typ: Some(MountTypeEnum::BIND),
                    source: Some("/etc".into()),
                    target: Some("/x".into()),
                    ..Default::default()
                }]),
                ..normal()
            },
            rule("bind_protected", "HostConfig.Mounts[0].Source"),
        ),
        (
            "mount volume bind",
            HostConfig {
                mounts: Some(vec![Mount {
                    typ: Some(MountTypeEnum::VOLUME),
                    target: Some("/x".into()),
                    volume_options: Some(MountVolumeOptions {
                        driver_config: Some(MountVolumeOptionsDriverConfig {
                            name: Some("local".into()),
                            options: Some(HashMap::from([
                                ("o".into(), "bind".into()),
                                ("device".into(), "/root".into()),
                            ])),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..normal()
            },
            rule(
                "bind_protected",
                "HostConfig.Mounts[0].VolumeOptions.DriverConfig.device",
            ),
        ),
        (
            "mount image",
            HostConfig {
                mounts: Some(vec![Mount {
                    typ: Some(MountTypeEnum::IMAGE),
                    target: Some("/x".into()),
                    ..Default::default()
                }]),
                ..normal()
            },
            rule("mount_type", "HostConfig.Mounts[0].Type"),
        ),
        (
            "devices",
            HostConfig {
                devices: Some(vec![DeviceMapping {
                    path_on_host: Some("/dev/mem".into()),
                    ..Default::default()
                }]),
                ..normal()
            },
            rule("devices", "HostConfig.Devices[0].PathOnHost"),
        ),
        (
            "gpus",
            HostConfig {
                device_requests: Some(vec![DeviceRequest::default()]),
                ..normal()
            },
            rule("devices", "HostConfig.DeviceRequests"),
        ),
        (
            "unmasked",
            HostConfig {
                masked_paths: Some(vec![]),
                ..normal()
            },
            rule("systempaths", "HostConfig.MaskedPaths"),
        ),
        (
            "writable proc",
            HostConfig {
                readonly_paths: Some(vec!["/proc/bus".into()]),
                ..normal()
            },
            rule("systempaths", "HostConfig.ReadonlyPaths"),
        ),
        (
            "seccomp",
            HostConfig {
                security_opt: Some(vec!["seccomp=unconfined".into()]),
                ..normal()
            },
            rule("seccomp", "HostConfig.SecurityOpt[0]"),
        ),
        (
            "sysctl",
            HostConfig {
                sysctls: Some(HashMap::from([(
                    "kernel.core_pattern".into(),
                    "|/x".into(),
                )])),
                ..normal()
            },
            rule("sysctls", "HostConfig.Sysctls.kernel.core_pattern"),
        ),
    ];
    for (name, hc, want) in cases {
        assert_eq!(
            outcome(check_host_config(&hc, &policy, root.path())),
            want,
            "case {name}"
        );
    }
}

/// A stand-in for the engine.
#[derive(Default)]
struct Fake {
    containers: HashMap<String, ContainerInspectResponse>,
    volumes: HashMap<String, Volume>,
    networks: HashMap<String, String>,
}

impl Lookup for Fake {
    async fn container(
        &self,
        name: &ContainerRef,
    ) -> Result<Option<ContainerInspectResponse>, RpcError> {
        Ok(self.containers.get(name.as_str()).cloned())
    }
    async fn volume(&self, name: &VolumeRef) -> Result<Option<Volume>, RpcError> {
        Ok(self.volumes.get(name.as_str()).cloned())
    }
    async fn network_driver(&self, name: &NetworkRef) -> Result<Option<String>, RpcError> {
        Ok(self.networks.get(name.as_str()).cloned())
    }
}

fn container(hc: HostConfig, mounts: Vec<MountPoint>) -> ContainerInspectResponse {
    ContainerInspectResponse {
        name: Some("/c".into()),
        config: Some(ContainerConfig {
            image: Some("tomo-test/busybox:latest".into()),
            ..Default::default()
        }),
        host_config: Some(hc),
        mounts: Some(mounts),
        ..Default::default()
    }
}

fn fake() -> Fake {
    let bind_mount = |source: &str| MountPoint {
        typ: Some(MountPointTypeEnum::BIND),
        source: Some(source.into()),
        ..Default::default()
    };
    let volume_mount = |name: &str| MountPoint {
        typ: Some(MountPointTypeEnum::VOLUME),
        name: Some(name.into()),
        ..Default::default()
    };
    let volume = |name: &str, opts: &[(&str, &str)]| Volume {
        name: name.into(),
        driver: "local".into(),
        options: opts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    let mode = |pid: &str, net: &str| HostConfig {
        pid_mode: Some(pid.into()),
        network_mode: Some(net.into()),
        ..Default::default()
    };
    Fake {
        containers: HashMap::from([
            (
                "plain".into(),
                container(
                    mode("", "bridge"),
                    vec![volume_mount("data"), bind_mount("/srv/app")],
                ),
            ),
            (
                "priv".into(),
                container(
                    HostConfig {
                        privileged: Some(true),
                        ..Default::default()
                    },
                    vec![],
                ),
            ),
            (
                "sock".into(),
                container(
                    HostConfig::default(),
                    vec![bind_mount("/var/run/docker.sock")],
                ),
            ),
            (
                "evilvol".into(),
                container(HostConfig::default(), vec![volume_mount("etcvol")]),
            ),
            ("hostpid".into(), container(mode("host", "bridge"), vec![])),
            ("hostnet".into(), container(mode("", "host"), vec![])),
            (
                "joins-hostnet".into(),
                container(mode("", "container:hostnet"), vec![]),
            ),
            (
                "loop".into(),
                container(mode("container:loop", "container:loop"), vec![]),
            ),
        ]),
        volumes: HashMap::from([
            ("data".into(), volume("data", &[])),
            (
                "etcvol".into(),
                volume(
                    "etcvol",
                    &[("o", "bind"), ("type", "none"), ("device", "/etc")],
                ),
            ),
            (
                "srvvol".into(),
                volume("srvvol", &[("o", "bind"), ("device", "/srv/app")]),
            ),
        ]),
        networks: HashMap::from([
            ("hostalias".into(), "host".into()),
            ("appnet".into(), "bridge".into()),
        ]),
    }
}

#[tokio::test]
async fn references_on_the_engine() {
    let root = host();
    let policy = defaults();
    let lookup = fake();
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let cases: Vec<Case<RunParams>> = vec![
        (
            "volumes_from plain",
            run(|p| p.volumes_from = strings(&["plain:ro"])),
            None,
        ),
        (
            "volumes_from privileged",
            run(|p| p.volumes_from = strings(&["priv"])),
            rule("volumes_from", "volumes_from[0]"),
        ),
        (
            "volumes_from socket",
            run(|p| p.volumes_from = strings(&["plain", "sock:rw"])),
            rule("volumes_from", "volumes_from[1]"),
        ),
        (
            "volumes_from bind volume",
            run(|p| p.volumes_from = strings(&["evilvol"])),
            rule("volumes_from", "volumes_from[0]"),
        ),
        (
            "join plain pid",
            run(|p| p.pid_mode = Some("container:plain".into())),
            None,
        ),
        (
            "join host pid",
            run(|p| p.pid_mode = Some("container:hostpid".into())),
            rule("namespace", "pid_mode"),
        ),
        (
            "join host net",
            run(|p| p.network_mode = Some("container:hostnet".into())),
            rule("namespace", "network_mode"),
        ),
        (
            "join through a join",
            run(|p| p.network_mode = Some("Container:joins-hostnet".into())),
            rule("namespace", "network_mode"),
        ),
        (
            "join privileged",
            run(|p| p.ipc_mode = Some("container:priv".into())),
            rule("namespace", "ipc_mode"),
        ),
        (
            "join loop",
            run(|p| p.pid_mode = Some("container:loop".into())),
            rule("namespace", "pid_mode"),
        ),
        (
            "network named like host's",
            run(|p| p.network_mode = Some("hostalias".into())),
            rule("namespace", "network_mode"),
        ),
        (
            "network bridge",
            run(|p| p.network_mode = Some("appnet".into())),
            None,
        ),
        (
            "existing bind volume",
            bind("etcvol"),
            rule("bind_protected", "volumes[0].source"),
        ),
        (
            "existing bind volume by mount",
            mount("volume", Some("etcvol"), &[]),
            rule("bind_protected", "mounts[0].source"),
        ),
        ("existing good bind volume", bind("srvvol"), None),
        ("new volume", bind("brand-new"), None),
    ];
    for (name, p, want) in cases {
        assert_eq!(
            check_run(&p, &policy, root.path()).err().map(|e| e.message),
            None,
            "{name}"
        );
        let got = outcome(check_run_refs(&p, &policy, root.path(), &lookup).await);
        assert_eq!(got, want, "case {name}");
    }
    let missing = run(|p| p.volumes_from = strings(&["nope"]));
    let e = check_run_refs(&missing, &policy, root.path(), &lookup)
        .await
        .expect_err("missing");
    assert_eq!(e.code, code::NOT_FOUND);
}

#[tokio::test]
async fn existing_containers_are_checked_whole() {
    let root = host();
    let lookup = fake();
    let policy = defaults();
    for name in ["plain", "joins-hostnet"] {
        let c = &lookup.containers[name];
        let got = outcome(check_container(c, &policy, root.path(), &lookup).await);
        let want = (name != "plain")
            .then(|| ("namespace".to_owned(), "HostConfig.NetworkMode".to_owned()));
        assert_eq!(got, want, "{name}");
    }
    let e = check_container(&lookup.containers["sock"], &policy, root.path(), &lookup)
        .await
        .expect_err("binds the socket");
    assert!(e.message.starts_with("container c: "), "{}", e.message);
    assert_eq!(
        e.data,
        Some(json!({"rule": "bind_protected", "param": "Mounts[0].Source"}))
    );
    let narrow = HostPolicy {
        images: Some(vec!["docker.io/library/*".into()]),
        ..defaults()
    };
    let e = check_container(&lookup.containers["plain"], &narrow, root.path(), &lookup)
        .await
        .expect_err("image");
    assert_eq!(
        e.data,
        Some(json!({"rule": "image", "param": "Config.Image"}))
    );
}

/// Issue 12.1: a start judges the container's mounts again, as they resolve now: a bind
/// source swapped for a symlink to `/etc` since `run` is refused, in each place Docker keeps it.
#[tokio::test]
async fn a_start_judges_every_mount_again() {
    let root = host();
    let r = root.path();
    std::fs::create_dir_all(r.join("srv/data")).expect("mkdir");
    let mut lookup = fake();
    let policy = defaults();
    let binds = |source: &str| HostConfig {
        binds: Some(vec![format!("{source}:/x:ro")]),
        ..Default::default()
    };
    let mount = |source: &str| HostConfig {
        mounts: Some(vec![Mount {
            typ: Some(MountTypeEnum::BIND),
            source: Some(source.into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let point = |source: &str| MountPoint {
        typ: Some(MountPointTypeEnum::BIND),
        source: Some(source.into()),
        ..Default::default()
    };
    lookup
        .containers
        .insert("bind".into(), container(binds("/srv/data"), vec![]));
    lookup
        .containers
        .insert("mount".into(), container(mount("/srv/data"), vec![]));
    lookup.containers.insert(
        "point".into(),
        container(HostConfig::default(), vec![point("/srv/data")]),
    );
    lookup.containers.insert(
        "caps".into(),
        container(
            HostConfig {
                cap_add: Some(vec!["SYS_ADMIN".into()]),
                ..Default::default()
            },
            vec![],
        ),
    );
    let cases = [
        ("bind", "HostConfig.Binds[0]"),
        ("mount", "HostConfig.Mounts[0].Source"),
        ("point", "Mounts[0].Source"),
    ];
    for (name, _) in cases {
        assert!(
            check_start(name, &policy, r, &lookup).await.is_ok(),
            "{name} before"
        );
    }
    std::fs::remove_dir(r.join("srv/data")).expect("rmdir");
    std::os::unix::fs::symlink("/etc", r.join("srv/data")).expect("link");
    for (name, param) in cases {
        let e = check_start(name, &policy, r, &lookup)
            .await
            .expect_err("swapped");
        assert_eq!(
            e.data,
            Some(json!({"rule": "bind_protected", "param": param})),
            "{name}"
        );
        assert!(e.message.starts_with("container c: "), "{}", e.message);
    }
    // A volume that binds a host path is judged as it is now too.
    let e = check_binds(&lookup.containers["evilvol"], &policy, r, &lookup)
        .await
        .expect_err("the volume binds the socket");
    assert_eq!(e.code, code::CONTAINER_BLOCKED, "{}", e.message);
    // Only what is mounted is judged at a start: other options are update's business.
    assert!(check_start("caps", &policy, r, &lookup).await.is_ok());
    let e = check_start("missing", &policy, r, &lookup)
        .await
        .expect_err("none");
    assert_eq!(e.code, code::NOT_FOUND);
}

#[test]
fn normal_forms() {
    assert_eq!(capability(" cap_sys_admin "), Some("SYS_ADMIN".into()));
    assert_eq!(capability("CAP_"), None);
    assert_eq!(capability("a-b"), None);
    assert_eq!(
        security_opt("SECCOMP:unconfined").to_string(),
        "seccomp=unconfined"
    );
    assert_eq!(
        security_opt(" label = disable ").to_string(),
        "label=disable"
    );
    assert_eq!(
        security_opt("no-new-privileges").to_string(),
        "no-new-privileges"
    );
    assert_eq!(device_cgroup_rule(" C  1:3 RWM "), "c 1:3 rwm");
}

/// Found by the `validators` fuzz target: two spellings of one option key are refused, so a second
/// spelling of `device` cannot carry the real source past the check.
#[test]
fn volume_option_keys_are_exact() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("srv/app")).expect("srv");
    let policy = HostPolicy::default_for(std::path::Path::new("/srv/tomo"));
    let mut p = RunParams {
        image: "busybox".into(),
        ..Default::default()
    };
    p.mounts.push(tomo_proto::methods::MountSpec {
        kind: "volume".into(),
        source: Some("v1".into()),
        target: "/v".into(),
        read_only: false,
        tmpfs_size: None,
        volume_driver_opts: [
            ("o".to_owned(), "bind".to_owned()),
            ("device".to_owned(), "/etc".to_owned()),
            ("device ".to_owned(), "/srv/app".to_owned()),
        ]
        .into(),
    });
    let e = crate::validate::check_run(&p, &policy, root.path()).expect_err("refused");
    assert_eq!(e.code, tomo_proto::rpc::code::CONTAINER_BLOCKED);
    let rule = e
        .data
        .as_ref()
        .and_then(|d| d.get("rule"))
        .and_then(|r| r.as_str());
    assert!(
        matches!(rule, Some("volume_options" | "bind_protected")),
        "{e:?}"
    );
}
