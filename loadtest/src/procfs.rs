//! What `/proc` tells about the server and the tester itself: CPU time,
//! memory and UDP sockets.

use std::time::Instant;

use crate::report::ProcessUse;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A reading of a process's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

/// CPU time (user + system) of `pid` now.
pub fn cpu(pid: u32) -> Option<CpuSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name in parentheses: utime and stime are the
    // 12th and 13th of them.
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(CpuSample {
        ticks,
        at: Instant::now(),
    })
}

/// CPU use between two samples, percent of one core.
pub fn cpu_pct(start: CpuSample, end: CpuSample) -> f64 {
    let seconds = end.at.saturating_duration_since(start.at).as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    (end.ticks.saturating_sub(start.ticks)) as f64 / TICKS_PER_SECOND / seconds * 100.0
}

/// What `pid` used since `start`: CPU, and memory now.
pub fn usage(pid: u32, start: CpuSample) -> Option<ProcessUse> {
    Some(ProcessUse {
        cpu_pct: cpu_pct(start, cpu(pid)?),
        rss_mb: rss_mb(pid).unwrap_or(0.0),
    })
}

/// Resident memory of `pid`, MiB.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// How many cores `pid` may run on (its CPU affinity, as `taskset` sets it).
pub fn cores_allowed(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    count_cpus(
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?,
    )
}

/// The number of CPUs in a list such as `0-3,6`.
fn count_cpus(list: &str) -> Option<usize> {
    let mut count = 0;
    for part in list.trim().split(',') {
        count += match part.split_once('-') {
            Some((a, b)) => b
                .parse::<usize>()
                .ok()?
                .checked_sub(a.parse().ok()?)?
                .checked_add(1)?,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(count)
}

/// How many UDP sockets `pid` has open (in its network namespace).
pub fn udp_sockets(pid: u32) -> Option<usize> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["udp", "udp6"] {
        // A kernel without IPv6 has no udp6 table.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        // After the heading, the inode is the tenth column.
        inodes.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned)),
        );
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|link| {
                link.to_str()
                    .and_then(|l| l.strip_prefix("socket:[")?.strip_suffix(']'))
                    .is_some_and(|inode| inodes.contains(inode))
            })
            .count(),
    )
}

/// The pid of the one process named `sluice` on this machine, if exactly one.
pub fn find_sluice() -> Option<u32> {
    let mut found = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sluice")
        });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-1"), Some(2));
        assert_eq!(count_cpus(" 0-3,6,8-9\n"), Some(7));
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(count_cpus("a"), None);
        assert!(cores_allowed(std::process::id()).unwrap() >= 1);
    }

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        let a = cpu(me).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let b = cpu(me).unwrap();
        assert!(cpu_pct(a, b) >= 0.0);
        assert!(rss_mb(me).unwrap() > 1.0);
        assert!(cpu(u32::MAX).is_none());
        let before = udp_sockets(me).unwrap();
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Other tests of this binary may open sockets meanwhile, so only
        // a lower bound holds.
        assert!(udp_sockets(me).unwrap() >= before + 2);
        drop((a, b, tcp));
    }
}
