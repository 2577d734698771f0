//! What the benchmark reads from and asks of the operating system: CPU pinning
//! (`sched_setaffinity`), the file descriptor limit, a process's CPU time and resident
//! memory from `/proc/PID/stat` and `/proc/PID/status`, and what the machine is: its CPU,
//! kernel, and what one durable commit costs its disk.

use std::fs;
use std::io;
use std::net::Ipv4Addr;

/// Pins the calling thread (and the threads it creates afterwards) to `cores`.
pub fn pin_self(cores: &[usize]) -> io::Result<()> {
    // SAFETY: `cpu_set_t` is plain data; CPU_ZERO/CPU_SET only write inside it, and
    // sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &core in cores {
            libc::CPU_SET(core, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    // SAFETY: getrlimit/setrlimit read and write one `rlimit` we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(limit.rlim_cur as u64)
    }
}

/// Clock ticks per second, the unit of `utime` and `stime` in `/proc/PID/stat`.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// User plus system CPU time of process `pid` (all its threads), in microseconds.
pub fn cpu_micros(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count fields
    // from the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / ticks_per_second())
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How many ephemeral ports one source address can use towards one server port.
pub fn ephemeral_ports() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28_000)
}

/// Source addresses 127.0.0.1, 127.0.0.2, ... enough for `connections` sockets to one
/// server port while leaving half of each address's ephemeral ports free (sockets in
/// TIME_WAIT from earlier runs hold some).
pub fn source_addresses(connections: usize, requested: Option<usize>) -> Vec<Ipv4Addr> {
    let per_address = (ephemeral_ports() / 2).max(1) as usize;
    let count = requested
        .unwrap_or_else(|| connections.div_ceil(per_address))
        .clamp(1, 250);
    (1..=count as u8)
        .map(|i| Ipv4Addr::new(127, 0, 0, i))
        .collect()
}

/// One line about the machine: cores, CPU model (its name, and its family and model
/// numbers, which tell apart machines that share a name), kernel.
pub fn machine() -> serde_json::Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    // The first processor's value of `key` (`model name`, `cpu family`, `model`).
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let number = |key: &str| field(key).parse::<u32>().ok();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    serde_json::json!({
        "cores": cores,
        "cpu": field("model name"),
        "cpu_family": number("cpu family"),
        "cpu_model": number("model"),
        "kernel": kernel,
    })
}

/// What one durable commit costs this machine's disk before any database work:
/// [`DiskCommit::BYTES`] written after the last, then `fdatasync`, as a store's commit
/// does. Machines of one name differ most here (`scripts/fsync_probe.py` has put a 2 KB
/// commit at 45 to 110 µs of CPU on this project's machines: docs/benchmarks.md, "What
/// bounds", section 2), and the store's share of the hub's CPU moves with it, so every
/// line carries its own.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskCommit {
    pub commits: usize,
    /// User plus system CPU time of the probing thread per commit.
    pub cpu_us: f64,
    pub wall_p50_us: f64,
    pub wall_p99_us: f64,
}

impl DiskCommit {
    pub const BYTES: usize = 2048;

    /// Commits `commits` times into a new file in `dir` (which must be on the disk
    /// being measured: a memory-backed /tmp syncs for free), from a thread pinned to
    /// `cores` when given (the server's, so the figure is that core's). The file is
    /// removed afterwards, whatever happened.
    pub fn probe(
        dir: &std::path::Path,
        cores: Option<&[usize]>,
        commits: usize,
    ) -> io::Result<DiskCommit> {
        let path = dir.join(format!("bc-disk-probe-{}", std::process::id()));
        let cores = cores.map(<[usize]>::to_vec);
        let worker_path = path.clone();
        let outcome = std::thread::spawn(move || {
            if let Some(cores) = &cores {
                pin_self(cores)?;
            }
            commit_repeatedly(&worker_path, commits)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the disk probe's thread panicked")));
        let _ = fs::remove_file(&path);
        outcome
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bytes": Self::BYTES,
            "commits": self.commits,
            "cpu_us": crate::stats::round(self.cpu_us, 1),
            "wall_p50_us": crate::stats::round(self.wall_p50_us, 1),
            "wall_p99_us": crate::stats::round(self.wall_p99_us, 1),
        })
    }
}

fn commit_repeatedly(path: &std::path::Path, commits: usize) -> io::Result<DiskCommit> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;

    if commits == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no commits to time",
        ));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let length = (commits * DiskCommit::BYTES) as libc::off_t;
    // Preallocated, as SQLite's WAL is once it has grown: each sync then writes data,
    // not the file's new size.
    // SAFETY: posix_fallocate takes an open descriptor we own and two plain integers.
    let failed = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) };
    if failed != 0 {
        return Err(io::Error::from_raw_os_error(failed));
    }
    file.sync_all()?;
    let data = [b'x'; DiskCommit::BYTES];
    let mut wall = Vec::with_capacity(commits);
    let cpu_before = thread_cpu_micros()?;
    for i in 0..commits {
        let start = std::time::Instant::now();
        file.write_all_at(&data, (i * DiskCommit::BYTES) as u64)?;
        file.sync_data()?;
        wall.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let cpu = thread_cpu_micros()? - cpu_before;
    wall.sort_by(f64::total_cmp);
    let at = |q: f64| wall[((wall.len() - 1) as f64 * q).round() as usize];
    Ok(DiskCommit {
        commits,
        cpu_us: cpu / commits as f64,
        wall_p50_us: at(0.50),
        wall_p99_us: at(0.99),
    })
}

/// CPU time (user plus system) of the calling thread, in microseconds.
fn thread_cpu_micros() -> io::Result<f64> {
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(now.tv_sec as f64 * 1e6 + now.tv_nsec as f64 / 1e3)
    }
}

/// Busy time of each core since boot (all but idle and iowait), in microseconds.
pub fn core_busy_micros() -> Vec<u64> {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks = ticks_per_second();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            // user nice system idle iowait irq softirq steal (guest is inside user).
            let busy: u64 = f.iter().take(8).sum::<u64>()
                - f.get(3).copied().unwrap_or(0)
                - f.get(4).copied().unwrap_or(0);
            busy * 1_000_000 / ticks
        })
        .collect()
}

/// CPU time of every process whose command name is one of `names` (for example the
/// `postgres` backends and `redis-server`), in microseconds. Processes that exit between
/// two readings take their time with them, so this is a lower bound.
pub fn cpu_micros_of(names: &[&str]) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| names.contains(&c.trim()))
        })
        .filter_map(cpu_micros)
        .sum()
}

/// The kernel's count of connections dropped because a listener's accept queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`, for the whole machine): a client
/// whose SYN was dropped retries a second later, which a connect-time figure would
/// otherwise silently include.
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let index = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(index)?.parse().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the temporary directory, removed by the caller.
    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("bc-sys-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a fresh directory");
        dir
    }

    #[test]
    fn the_disk_probe_times_every_commit_and_leaves_no_file() {
        let dir = fresh_dir("probe");
        let probe = DiskCommit::probe(&dir, None, 20).expect("the probe runs");
        let left: Vec<_> = fs::read_dir(&dir).expect("readable").collect();
        fs::remove_dir_all(&dir).expect("removed");
        assert_eq!(probe.commits, 20);
        assert!(probe.cpu_us > 0.0, "{probe:?}");
        assert!(
            probe.wall_p50_us > 0.0 && probe.wall_p50_us <= probe.wall_p99_us,
            "{probe:?}"
        );
        assert!(left.is_empty(), "the probe's file was removed: {left:?}");
        let line = probe.to_json();
        assert_eq!(line["bytes"], 2048);
        assert_eq!(line["commits"], 20);
    }

    #[test]
    fn a_disk_probe_that_cannot_write_says_why() {
        let dir = std::env::temp_dir().join(format!("bc-sys-test-missing-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let failed = DiskCommit::probe(&dir, None, 20).expect_err("no directory to write in");
        assert_eq!(failed.kind(), io::ErrorKind::NotFound, "{failed}");
        let empty = fresh_dir("zero");
        let nothing = DiskCommit::probe(&empty, None, 0).expect_err("nothing to time");
        fs::remove_dir_all(&empty).expect("removed");
        assert_eq!(nothing.kind(), io::ErrorKind::InvalidInput, "{nothing}");
    }

    #[test]
    fn the_machine_is_named_by_its_cpu_numbers_too() {
        let machine = machine();
        assert!(
            machine["cores"].as_i64().is_some_and(|n| n >= 1),
            "{machine}"
        );
        // Every x86 Linux lists `cpu family` and `model` for each processor.
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert!(machine["cpu_family"].is_u64(), "{machine}");
            assert!(machine["cpu_model"].is_u64(), "{machine}");
        }
    }
}
