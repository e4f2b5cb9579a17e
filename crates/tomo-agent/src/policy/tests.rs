//! Unit tests of the host policy: loading (defaults, each field, errors that name the line,
//! unsafe files refused) and `check_method`.

use std::os::unix::fs::PermissionsExt as _;

use serde_json::json;
use tomo_proto::methods::Level;
use tomo_proto::rpc::code;

use super::*;

fn parse(text: &str) -> Result<HostPolicy, PolicyError> {
    HostPolicy::from_toml(
        text,
        Path::new("/etc/tomo/policy.toml"),
        Path::new("/srv/tomo"),
    )
}

fn policy(text: &str) -> HostPolicy {
    parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn error_line(text: &str) -> (usize, String) {
    match parse(text) {
        Err(PolicyError::Invalid { line, message, .. }) => (line, message),
        other => panic!("{text}: expected an error naming a line, got {other:?}"),
    }
}

#[test]
fn defaults_let_a_new_install_work() {
    let p = HostPolicy::default_for(Path::new("/srv/tomo"));
    assert_eq!(p.source, None);
    assert_eq!(p.max_level, Level::Admin);
    assert!(!p.read_only);
    assert!(p.deny_methods.is_empty());
    assert_eq!(p.allow_methods, None);
    assert_eq!(p.images, None);
    assert!(p.exec_allow.is_empty());
    assert_eq!(
        p.bind_roots,
        ["/srv", "/opt", "/mnt", "/media", "/data", "/srv/tomo"]
    );
    assert_eq!(p.cap_add_allowed.len(), DOCKER_DEFAULT_CAPS.len());
    for c in ["NET_BIND_SERVICE", "CHOWN", "KILL", "SETFCAP"] {
        assert!(p.cap_add_allowed.contains(c), "{c}");
    }
    for c in [
        "ALL",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "SYS_MODULE",
        "NET_ADMIN",
        "BPF",
    ] {
        assert!(!p.cap_add_allowed.contains(c), "{c}");
    }
    assert!(p.devices.is_empty() && p.device_cgroup_rules.is_empty());
    assert_eq!(p.sysctls, ["net.*"]);
    assert_eq!(p.volume_drivers, ["local"]);
    assert_eq!(p.rate_per_minute, 30);
    assert_eq!(p.max_concurrent, 5);
    assert_eq!(p.reads_per_minute, 600);
    assert_eq!(p.docker_read_bytes, 4 << 20);
    // An empty file is the defaults, from that file.
    let empty = policy("");
    assert_eq!(
        empty.source.as_deref(),
        Some(Path::new("/etc/tomo/policy.toml"))
    );
    assert_eq!(
        HostPolicy {
            source: None,
            ..empty
        },
        p
    );
}

#[test]
fn a_volume_base_inside_a_protected_path_is_no_bind_root() {
    let p = HostPolicy::default_for(Path::new("/var/lib/tomo"));
    assert!(!p.bind_roots.iter().any(|r| r.starts_with("/var")));
    let p = HostPolicy::default_for(Path::new("/srv//tomo/"));
    assert!(p.bind_roots.contains(&"/srv/tomo".to_owned()));
}

#[test]
fn every_field_is_read() {
    let p = policy(
        r#"
max_level = "execute"
read_only = true
deny_methods = ["docker.containers.exec", "system.*"]
allow_methods = ["docker.*", "agent.ping"]
images = ["docker.io/library/*", "ghcr.io/acme/*", "nginx"]
exec_allow = ["journalctl -u <name> -n <count>"]
bind_roots = ["/srv/apps/", "/mnt//data"]
cap_add_allowed = ["net_admin", "CAP_SYS_TIME"]
devices = ["/dev/ttyUSB*"]
device_cgroup_rules = ["c  188:*   RWM"]
security_opt = ["AppArmor=my-profile"]
sysctls = ["net.*", "kernel.shm*"]
volume_drivers = ["local", "rexray"]
volume_types = ["tmpfs", "ext4"]
rate_per_minute = 120
max_concurrent = 2
reads_per_minute = 90
docker_read_bytes = 16777216
"#,
    );
    assert_eq!(p.max_level, Level::Execute);
    assert!(p.read_only);
    assert_eq!(p.deny_methods, ["docker.containers.exec", "system.*"]);
    assert_eq!(
        p.allow_methods.as_deref(),
        Some(&["docker.*".to_owned(), "agent.ping".to_owned()][..])
    );
    assert_eq!(
        p.images.as_deref(),
        Some(
            &[
                "docker.io/library/*".to_owned(),
                "ghcr.io/acme/*".to_owned(),
                "docker.io/library/nginx".to_owned()
            ][..]
        )
    );
    assert_eq!(p.exec_allow.len(), 1);
    assert_eq!(
        p.exec_allow[0].to_string(),
        "journalctl -u <name> -n <count>"
    );
    // The volume base stays a root whatever the file says.
    assert_eq!(p.bind_roots, ["/srv/apps", "/mnt/data", "/srv/tomo"]);
    assert_eq!(
        p.cap_add_allowed.iter().cloned().collect::<Vec<_>>(),
        ["NET_ADMIN", "SYS_TIME"]
    );
    assert_eq!(p.devices, ["/dev/ttyUSB*"]);
    assert_eq!(p.device_cgroup_rules, ["c 188:* rwm"]);
    assert_eq!(p.security_opt, ["apparmor=my-profile"]);
    assert_eq!(p.sysctls, ["net.*", "kernel.shm*"]);
    assert_eq!(p.volume_drivers, ["local", "rexray"]);
    assert_eq!(p.volume_types, ["tmpfs", "ext4"]);
    assert_eq!(p.rate_per_minute, 120);
    assert_eq!(p.max_concurrent, 2);
    assert_eq!(p.reads_per_minute, 90);
    assert_eq!(p.docker_read_bytes, 16 << 20);
}

#[test]
fn exec_allow_entries_extend_the_builtin_allowlist() {
    let p = policy(r#"exec_allow = ["journalctl -u <name> -n <count>"]"#);
    let argv = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let list = p.exec_allowlist();
    assert!(list.check(&argv("journalctl -u nginx -n 50")).is_ok());
    assert!(
        list.check(&argv("df -h")).is_ok(),
        "the built-in entries stay"
    );
    assert!(list.check(&argv("journalctl -u nginx -f")).is_err());
    assert!(
        HostPolicy::default_for(Path::new("/srv/tomo"))
            .exec_allowlist()
            .check(&argv("journalctl -u nginx -n 50"))
            .is_err()
    );
}

#[test]
fn malformed_files_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("read_only = true\nmax_level = \"root\"\n", 2, "root"),
        ("\n\nread-only = true\n", 3, "read-only"),
        ("read_only = \"yes\"\n", 1, "bool"),
        ("images = [\n  \"nginx\",\n  \"a b\",\n]\n", 3, "images"),
        (
            "deny_methods = [\"docker.container.run\"]\n",
            1,
            "matches no method",
        ),
        ("deny_methods = [\"docker*\"]\n", 1, "prefix"),
        ("\nexec_allow = [\"/bin/sh -c <name>\"]\n", 2, "exec_allow"),
        ("bind_roots = [\"/var/lib/app\"]\n", 1, "protected /var"),
        ("bind_roots = [\"srv\"]\n", 1, "absolute"),
        ("cap_add_allowed = [\"NET ADMIN\"]\n", 1, "capability"),
        ("rate_per_minute = 0\n", 1, "rate_per_minute"),
        ("\n\n\nmax_concurrent = 100000\n", 4, "max_concurrent"),
        ("reads_per_minute = 0\n", 1, "reads_per_minute"),
        ("docker_read_bytes = 1024\n", 1, "docker_read_bytes"),
        ("sysctls = [\"kernel shm\"]\n", 1, "sysctl"),
        ("read_only = true\nread_only = false\n", 2, "duplicate"),
        ("[section\n", 1, ""),
    ];
    for (text, line, needle) in cases {
        let (got, message) = error_line(text);
        assert_eq!(got, *line, "{text:?}: {message}");
        assert!(message.contains(needle), "{text:?}: {message}");
    }
    let e = parse("\n\nread-only = true\n").expect_err("unknown key");
    assert!(
        e.to_string()
            .starts_with("policy file /etc/tomo/policy.toml, line 3: "),
        "{e}"
    );
}

#[test]
fn loading_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = Path::new("/srv/tomo");
    let file = dir.path().join("policy.toml");
    // An explicitly named file must exist.
    assert!(matches!(
        HostPolicy::load(Some(&file), base),
        Err(PolicyError::Missing(_))
    ));
    std::fs::write(&file, "read_only = true\n").expect("write");
    let mode = |m: u32| {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    for ok in [0o644, 0o600, 0o400, 0o640] {
        mode(ok);
        let p = HostPolicy::load(Some(&file), base).unwrap_or_else(|e| panic!("{ok:o}: {e}"));
        assert!(p.read_only);
        assert_eq!(p.source.as_deref(), Some(file.as_path()));
    }
    for writable in [0o664, 0o666, 0o646, 0o620, 0o602] {
        mode(writable);
        let e = HostPolicy::load(Some(&file), base).expect_err("writable by others");
        assert!(
            matches!(e, PolicyError::Writable { mode, .. } if mode == writable),
            "{writable:o}: {e}"
        );
    }
    mode(0o644);
    // A directory others can write to lets them replace the file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    assert!(matches!(
        HostPolicy::load(Some(&file), base),
        Err(PolicyError::DirectoryWritable { .. })
    ));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    assert!(
        HostPolicy::load(Some(&file), base).is_ok(),
        "sticky directory"
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // A symlink in a directory others can write to can be swapped for another one.
    let open = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let link = open.path().join("policy.toml");
    std::os::unix::fs::symlink(&file, &link).expect("symlink");
    assert!(matches!(
        HostPolicy::load(Some(&link), base),
        Err(PolicyError::DirectoryWritable { .. })
    ));
    // A directory is not a policy file.
    assert!(matches!(
        HostPolicy::load(Some(dir.path()), base),
        Err(PolicyError::NotAFile { .. })
    ));
    std::fs::write(&file, "max_level = 3\n").expect("write");
    assert!(matches!(
        HostPolicy::load(Some(&file), base),
        Err(PolicyError::Invalid { line: 1, .. })
    ));
}

#[test]
fn the_agent_data_dir_can_be_protected() {
    let p = HostPolicy::default_for(Path::new("/srv/tomo")).protect(Path::new("/data//agent/"));
    assert_eq!(p.protected_extra, ["/data/agent"]);
}

fn refusal(p: &HostPolicy, method: &str, level: Level, role: Level) -> Option<serde_json::Value> {
    p.check_method(method, level, role).err().map(|e| {
        assert_eq!(e.code, code::SECURITY, "{method}: {}", e.message);
        e.data.unwrap_or_default()
    })
}

#[test]
fn the_effective_level_is_the_lower_of_role_and_max_level() {
    let levels = [Level::Read, Level::Execute, Level::Admin];
    for max in levels {
        let p = HostPolicy {
            max_level: max,
            ..HostPolicy::default_for(Path::new("/srv/tomo"))
        };
        for role in levels {
            assert_eq!(p.effective_level(role), role.min(max));
            for level in levels {
                let got = refusal(&p, "system.info", level, role);
                let want = if level > max {
                    Some(json!({"reason": "policy", "rule": "max_level"}))
                } else if level > role {
                    Some(json!({"reason": "forbidden"}))
                } else {
                    None
                };
                assert_eq!(got, want, "max {max:?} role {role:?} level {level:?}");
            }
        }
    }
    let p = policy("max_level = \"read\"");
    let e = p
        .check_method("docker.containers.run", Level::Admin, Level::Admin)
        .expect_err("above max_level");
    assert!(e.message.contains("max_level"), "{}", e.message);
}

#[test]
fn read_only_runs_read_methods_only() {
    let p = policy("read_only = true");
    assert_eq!(
        refusal(&p, "docker.containers.list", Level::Read, Level::Admin),
        None
    );
    assert_eq!(
        refusal(&p, "docker.containers.stop", Level::Execute, Level::Admin),
        Some(json!({"reason": "policy", "rule": "read_only"}))
    );
    assert_eq!(
        refusal(&p, "docker.containers.run", Level::Admin, Level::Admin),
        Some(json!({"reason": "policy", "rule": "read_only"}))
    );
}

#[test]
fn deny_and_allow_globs() {
    let p = policy(
        r#"
deny_methods = ["docker.containers.exec", "system.*"]
allow_methods = ["docker.*", "agent.ping"]
"#,
    );
    let denied = Some(json!({"reason": "policy", "rule": "deny_methods"}));
    let not_allowed = Some(json!({"reason": "policy", "rule": "allow_methods"}));
    let cases = [
        ("docker.containers.list", None),
        ("docker.containers.run", None),
        ("docker.images.pull", None),
        ("agent.ping", None),
        ("docker.containers.exec", denied.clone()),
        ("system.exec", denied.clone()),
        ("system.info", denied),
        ("agent.restart", not_allowed.clone()),
        ("agent.update", not_allowed.clone()),
        ("stream.write", not_allowed),
        // Stream housekeeping follows the methods that opened the streams.
        ("stream.ack", None),
        ("stream.close", None),
    ];
    for (method, want) in cases {
        assert_eq!(
            refusal(&p, method, Level::Read, Level::Admin),
            want,
            "{method}"
        );
    }
    // A prefix glob matches whole name parts only through its dot.
    assert!(method_matches("docker.*", "docker.images.list"));
    assert!(!method_matches("docker.*", "dockerx.list"));
    assert!(method_matches("*", "agent.ping"));
    let e = policy(r#"deny_methods = ["docker.containers.*"]"#)
        .check_method("docker.containers.run", Level::Admin, Level::Admin)
        .expect_err("denied");
    assert!(e.message.contains("docker.containers.*"), "{}", e.message);
}

#[test]
fn globs() {
    let cases = [
        ("*", "", true),
        ("*", "a/b:c", true),
        ("a*c", "abbbc", true),
        ("a*c", "ab", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("docker.io/library/*", "docker.io/library/nginx:1", true),
        ("docker.io/library/*", "docker.io/libraryx/nginx", false),
        ("*.acme.io/*", "r.acme.io/x", true),
        ("net.*", "net.ipv4.ip_forward", true),
        ("net.*", "kernel.net", false),
        ("**a", "xa", true),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ];
    for (pattern, text, want) in cases {
        assert_eq!(glob(pattern, text), want, "{pattern} ~ {text}");
    }
}
