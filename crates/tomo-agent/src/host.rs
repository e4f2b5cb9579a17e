//! Facts and metrics read from the host's `/proc` and `/etc`, without shelling out.
//!
//! Reads are cheap (a few small files); CPU and network rates need two readings, so a background
//! sampler (`collect.rs`) keeps the previous one and requests read its latest sample.

use std::path::Path;

use tomo_proto::methods::{DiskUsage, NetworkRates, Usage};

/// Static facts of the host.
#[derive(Debug, Clone, Default)]
pub struct StaticFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// Reads the facts that do not change while the agent runs.
pub fn static_facts(host_root: &Path, hostname_override: Option<&str>) -> StaticFacts {
    let hostname = hostname_override
        .map(str::to_owned)
        .or_else(|| {
            read_trimmed(&host_root.join("etc/hostname")).filter(|_| host_root != Path::new("/"))
        })
        .or_else(|| read_trimmed(Path::new("/proc/sys/kernel/hostname")))
        .unwrap_or_else(|| "unknown".into());
    StaticFacts {
        hostname,
        os: os_name(host_root),
        kernel: read_trimmed(Path::new("/proc/sys/kernel/osrelease")).unwrap_or_default(),
        arch: std::env::consts::ARCH.to_owned(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: memory().0.total,
    }
}

/// `PRETTY_NAME` from os-release, else `linux`.
fn os_name(host_root: &Path) -> String {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(host_root.join(p)).ok())
        .find_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

fn read_trimmed(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Seconds since the host booted.
pub fn uptime_secs() -> u64 {
    read_trimmed(Path::new("/proc/uptime"))
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|f| f as u64)
        .unwrap_or(0)
}

/// 1, 5 and 15 minute load averages.
pub fn load() -> [f64; 3] {
    let text = read_trimmed(Path::new("/proc/loadavg")).unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// (memory, swap) from `/proc/meminfo`.
pub fn memory() -> (Usage, Usage) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    let total = field("MemTotal");
    let mem = usage(total.saturating_sub(field("MemAvailable")), total);
    let swap_total = field("SwapTotal");
    let swap = usage(swap_total.saturating_sub(field("SwapFree")), swap_total);
    (mem, swap)
}

fn usage(used: u64, total: u64) -> Usage {
    Usage {
        used,
        total,
        percent: percent(used, total),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10_000.0 / whole as f64).round() / 100.0
    }
}

/// Cumulative CPU time: (busy, total) jiffies from the first line of `/proc/stat`.
pub fn cpu_times() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Cumulative (rx, tx) bytes of every interface but loopback, from `/proc/net/dev`.
pub fn net_bytes() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((*v.first()?, *v.get(8)?))
        })
        .fold((0, 0), |(rx, tx), (r, t)| (rx + r, tx + t))
}

/// Filesystems backed by a block device, each device once (bind mounts of the same device are
/// one disk, not several). In a container with the host's root at `host_root`, the host's own
/// mount table (`<host_root>/proc/1/mounts`) is read and each filesystem measured through
/// `host_root`, so the figures are the host's, not the container's.
pub fn disks(host_root: &std::path::Path) -> Vec<DiskUsage> {
    let host_table = (host_root != std::path::Path::new("/"))
        .then(|| std::fs::read_to_string(host_root.join("proc/1/mounts")).ok())
        .flatten();
    let (text, via) = match host_table {
        Some(t) => (t, host_root),
        None => (
            std::fs::read_to_string("/proc/self/mounts").unwrap_or_default(),
            std::path::Path::new("/"),
        ),
    };
    disks_from(&text, via)
}

/// [`disks`] over a mount table, measuring each mount point under `via`.
fn disks_from(text: &str, via: &std::path::Path) -> Vec<DiskUsage> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(device), Some(mount)) = (f.next(), f.next()) else {
            continue;
        };
        if !device.starts_with("/dev/")
            || device.starts_with("/dev/loop")
            || !seen.insert(device.to_owned())
        {
            continue;
        }
        let mount = mount.replace("\\040", " ");
        let Ok(st) = rustix::fs::statvfs(via.join(mount.trim_start_matches('/')).as_path()) else {
            continue;
        };
        let total = st.f_blocks * st.f_frsize;
        let used = total.saturating_sub(st.f_bfree * st.f_frsize);
        if total == 0 {
            continue;
        }
        out.push(DiskUsage {
            device: device.to_owned(),
            mount,
            used,
            total,
            percent: percent(used, total),
        });
    }
    out
}

/// Turns two readings into rates.
pub fn rates(prev: (u64, u64), now: (u64, u64), secs: f64) -> NetworkRates {
    if secs <= 0.0 {
        return NetworkRates::default();
    }
    NetworkRates {
        rx_bytes_per_sec: now.0.saturating_sub(prev.0) as f64 / secs,
        tx_bytes_per_sec: now.1.saturating_sub(prev.1) as f64 / secs,
    }
}

/// CPU busy percentage between two [`cpu_times`] readings.
pub fn cpu_percent(prev: (u64, u64), now: (u64, u64)) -> f64 {
    percent(now.0.saturating_sub(prev.0), now.1.saturating_sub(prev.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_real() {
        let f = static_facts(Path::new("/"), None);
        assert!(!f.hostname.is_empty());
        assert!(!f.kernel.is_empty());
        assert!(f.cpus >= 1);
        assert!(f.memory_bytes > 0);
        assert_eq!(
            static_facts(Path::new("/"), Some("override")).hostname,
            "override"
        );
    }

    #[test]
    fn cpu_and_memory_readings_make_sense() {
        let (busy, total) = cpu_times();
        assert!(total > 0 && busy <= total);
        let (mem, _) = memory();
        assert!(mem.used <= mem.total && mem.percent <= 100.0);
        assert_eq!(cpu_percent((10, 100), (60, 200)), 50.0);
        assert!(
            !disks(std::path::Path::new("/")).is_empty()
                || std::fs::read_to_string("/proc/self/mounts").is_ok()
        );
    }

    #[test]
    fn in_a_container_disks_are_the_hosts() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("proc/1")).expect("proc");
        std::fs::create_dir_all(root.path().join("srv/my disk")).expect("srv");
        std::fs::write(
            root.path().join("proc/1/mounts"),
            "/dev/fake0 / ext4 rw 0 0\n/dev/fake0 /data ext4 rw 0 0\n\
             /dev/fake1 /srv/my\\040disk xfs rw 0 0\ntmpfs /run tmpfs rw 0 0\n\
             /dev/fake2 /missing ext4 rw 0 0\n",
        )
        .expect("mounts");
        let d = disks(root.path());
        let mounts: Vec<_> = d
            .iter()
            .map(|d| (d.device.as_str(), d.mount.as_str()))
            .collect();
        assert_eq!(
            mounts,
            vec![("/dev/fake0", "/"), ("/dev/fake1", "/srv/my disk")]
        );
        assert!(d.iter().all(|d| d.total > 0));
    }
}
